"""Frozen settings objects filled from command-line flags and environment variables.

A binary declares its settings as a frozen dataclass whose fields are made with :func:`option`.
:func:`load` turns that into an argparse parser (``--flag-name``, help text that names the env var
and the default) and reads each field once: flag first, then ``PREFIX_FIELD_NAME`` from the
environment, then the default. A value that does not parse, or a ``validate()`` that raises
ValueError, stops the program with a usage error before anything binds a port.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, cast


class _Settings(Protocol):
    def validate(self) -> None: ...


S = TypeVar("S", bound=_Settings)


def option(
    default: Any,
    help: str,
    *,
    parse: Callable[[str], Any] = str,
    metavar: str | None = None,
    repeated: bool = False,
    shown: str | None = None,
) -> Any:
    """A settings field. ``parse`` turns one string into the value (raising ValueError when bad).

    ``repeated`` fields hold a tuple: the flag may be given many times, and the env var holds a
    comma-separated list. ``shown`` is how ``--help`` writes the default, when str() would not do.
    """
    metadata = {
        "help": help,
        "parse": parse,
        "metavar": metavar,
        "repeated": repeated,
        "shown": shown,
    }
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field: dataclasses.Field[Any]) -> str:
    return "--" + field.name.replace("_", "-")


def env_name(prefix: str, field: dataclasses.Field[Any]) -> str:
    return prefix + field.name.upper()


def shown_default(field: dataclasses.Field[Any]) -> str:
    """The default as --help and the configuration reference write it."""
    default = field.default
    if default is None and not field.metadata["shown"]:
        return "none"
    shown = field.metadata["shown"] or (
        ",".join(map(str, default)) if isinstance(default, tuple) else default
    )
    return str(shown)


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def build_parser(
    cls: type[Any], *, prog: str, description: str, env_prefix: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for field in dataclasses.fields(cls):
        meta = field.metadata
        text = (
            f"{meta['help']} [env {env_name(env_prefix, field)}; default: {shown_default(field)}]"
        )
        if meta["parse"] is parse_bool:
            parser.add_argument(
                flag_name(field),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        else:
            parser.add_argument(
                flag_name(field),
                dest=field.name,
                default=None,
                metavar=meta["metavar"] or field.name.upper(),
                action="append" if meta["repeated"] else "store",
                help=text,
            )
    return parser


def load(
    cls: type[S],
    argv: Sequence[str] | None,
    environ: Mapping[str, str],
    *,
    prog: str,
    description: str,
    env_prefix: str,
    epilog: str | None = None,
) -> S:
    """Parse ``argv`` and ``environ`` into ``cls``; exits with status 2 and a message if invalid."""
    parser = build_parser(
        cls, prog=prog, description=description, env_prefix=env_prefix, epilog=epilog
    )
    namespace = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cast(Any, cls)):
        meta = field.metadata
        env = env_name(env_prefix, field)
        given = getattr(namespace, field.name)
        source = flag_name(field)
        if given is None and env in environ:
            raw_env = environ[env]
            given = [p for p in raw_env.split(",") if p.strip()] if meta["repeated"] else raw_env
            if isinstance(given, str) and meta["parse"] is parse_bool:
                given = raw_env
            source = env
        if given is None:
            continue
        try:
            if meta["repeated"]:
                values[field.name] = tuple(meta["parse"](item) for item in given)
            elif isinstance(given, bool):
                values[field.name] = given
            else:
                values[field.name] = meta["parse"](given)
        except ValueError as exc:
            parser.error(f"{source}: {exc}")
    settings = cls(**values)
    try:
        settings.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return settings


def parse_addresses(text: str) -> tuple[str, ...]:
    """``"a:1,b:2"`` -> ("a:1", "b:2"): a comma-separated list of HOST:PORT, at least one."""
    out = []
    for item in (p.strip() for p in text.split(",")):
        if item:
            host, port = parse_host_port(item)
            out.append(f"{host}:{port}")
    if not out:
        raise ValueError("at least one HOST:PORT is needed")
    return tuple(out)


def parse_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``":8080"`` -> (host, port); ValueError if bad."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, port


def optional_address(text: str) -> tuple[str, int] | None:
    """HOST:PORT, or None for 'off', 'none' or nothing."""
    return None if text.strip().lower() in ("", "off", "none") else parse_host_port(text)
