"""Real headless Chromium (Debian chromium driven by npm playwright-core, through
tools/browser/driver.mjs) for the tests that need a browser: one JSON command per line."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tools" / "browser" / "driver.mjs"


class Browser:
    def __init__(self) -> None:
        node = shutil.which("node")
        assert node, "node is needed for the browser test (make install puts it in place)"
        assert (ROOT / "tools/browser/node_modules/playwright-core").is_dir(), (
            "playwright-core missing: run make install"
        )
        assert Path("/usr/bin/chromium").exists(), "Debian chromium missing: run make install"
        self.proc = subprocess.Popen(
            [node, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=DRIVER.parent,
        )
        assert self._read().get("ready"), "browser driver did not start"

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "browser driver exited"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def do(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        assert answer["ok"], f"{command}: {answer.get('error')}"
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.close()
