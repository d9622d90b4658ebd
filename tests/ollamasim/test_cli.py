"""``python -m ollamasim`` as a user runs it: flags, env vars, help and bad values."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests import procs

pytestmark = pytest.mark.slow


def test_runs_from_the_command_line_with_env_and_flags() -> None:
    env = {"HOPS_SIM_PROFILE": "cpu", "HOPS_SIM_TIME_SCALE": "40"}
    with procs.running("ollamasim", ["--listen", "127.0.0.1:0", "--seed", "7"], env) as sim:
        config = httpx.get(sim.url + "/_sim/config", timeout=5).json()
        reply = httpx.post(
            sim.url + "/api/generate",
            json={"model": "llama3.2:1b", "prompt": "x", "stream": False},
            timeout=30,
        )
    assert (config["profile"], config["seed"], config["time_scale"]) == ("cpu", 7, 40.0)
    assert config["vram"] == 0 and "all-minilm:latest" in config["models"]
    assert reply.status_code == 200 and reply.json()["done"] is True


def test_help_explains_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ollamasim", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for word in ("--profile", "--time-scale", "--fault", "HOPS_SIM_MAX_QUEUE", "/_sim/stats"):
        assert word in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-scale", "0"], "--time-scale must be > 0"),
        (["--profile", "gpu-99g"], "unknown profile"),
        (["--models", "mystery"], "unknown model"),
        (["--fault", "meteor"], "unknown fault mode"),
        (["--listen", "localhost"], "expected HOST:PORT"),
    ],
)
def test_bad_values_fail_at_start(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ollamasim", *args], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert message in result.stderr
