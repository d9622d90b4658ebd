"""Real processes for integration tests: started with a bounded wait for their ready line, and
always stopped (SIGTERM, then SIGKILL) when the test ends."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

READY_URL = re.compile(r"(?:listening on|serving on) (\S+)")


@dataclass
class Proc:
    """A child process whose output is collected on a thread, so pipes never fill up."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    url: str = ""

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(self.lines)
            if self.popen.poll() is not None and seen == len(self.lines):
                break
            time.sleep(0.02)
        raise AssertionError(f"{pattern!r} not seen; exit={self.popen.poll()}\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode


def start(module: str, args: Sequence[str], env: dict[str, str] | None = None) -> Proc:
    popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    proc = Proc(popen)

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            proc.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc


@contextlib.contextmanager
def running(
    module: str, args: Sequence[str], env: dict[str, str] | None = None, timeout: float = 20.0
) -> Iterator[Proc]:
    """Start ``python -m module args`` and wait for its 'listening on URL' line."""
    proc = start(module, args, env)
    try:
        proc.url = proc.wait_for(READY_URL.pattern, timeout).group(1)
        yield proc
    finally:
        proc.stop()
