from dataclasses import dataclass

import pytest

from hopscommon.settings import load, option, parse_bool, parse_host_port


@dataclass(frozen=True, kw_only=True)
class Demo:
    listen: tuple[str, int] = option(("127.0.0.1", 1), "where", parse=parse_host_port)
    workers: int = option(1, "how many", parse=int)
    verbose: bool = option(False, "chatty", parse=parse_bool)
    label: tuple[str, ...] = option((), "labels", repeated=True)

    def validate(self) -> None:
        if self.workers < 1:
            raise ValueError("--workers must be >= 1")


def _load(argv: list[str], env: dict[str, str]) -> Demo:
    return load(Demo, argv, env, prog="demo", description="d", env_prefix="DEMO_")


def test_flag_beats_env_beats_default() -> None:
    assert _load([], {}).workers == 1
    assert _load([], {"DEMO_WORKERS": "3"}).workers == 3
    assert _load(["--workers", "5"], {"DEMO_WORKERS": "3"}).workers == 5


def test_repeated_and_boolean_options() -> None:
    settings = _load(["--label", "a=1", "--label", "b=2", "--verbose"], {})
    assert settings.label == ("a=1", "b=2")
    assert settings.verbose is True
    assert _load([], {"DEMO_LABEL": "x=1,y=2", "DEMO_VERBOSE": "no"}).label == ("x=1", "y=2")


def test_bad_value_exits_with_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _load([], {"DEMO_LISTEN": "nowhere"})
    assert exc.value.code == 2
    assert "DEMO_LISTEN: expected HOST:PORT" in capsys.readouterr().err


def test_validate_failure_exits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load(["--workers", "0"], {})
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_help_names_env_vars_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load(["--help"], {})
    out = capsys.readouterr().out
    assert "DEMO_WORKERS" in out
    assert "default: 1" in out


def test_tls_settings_fail_at_start_when_incomplete_or_unreadable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from controlplane.settings import ControlPlaneSettings
    from edge.settings import EdgeSettings

    with pytest.raises(ValueError, match="go together"):
        ControlPlaneSettings(tls_cert="c.pem").validate()
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ControlPlaneSettings(tls_client_ca="ca.pem").validate()
    with pytest.raises(ValueError, match="cannot read CA certificate"):
        EdgeSettings(tls_ca=str(tmp_path / "missing.pem")).validate()
