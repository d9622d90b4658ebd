"""Debian's nginx run on loopback for tests and benchmarks: a main config with every path in a
work folder, the caller's http-level config included, stopped on exit."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    assert found, "nginx missing: make install puts it in place (scripts/system-deps.sh)"
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running(http_conf: str, port: int, workdir: Path) -> Iterator[subprocess.Popen[str]]:
    """Serve ``http_conf`` (server and upstream blocks listening on 127.0.0.1:``port``) until
    /api/version answers there; yields the process."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "hops.conf").write_text(http_conf)
    temp = "\n".join(
        f"  {kind}_temp_path {workdir}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may write the work folder
    (workdir / "nginx.conf").write_text(
        f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\nevents {{ worker_connections 4096; }}\n"
        f"http {{\n  access_log off;\n{temp}\n  include {workdir}/hops.conf;\n}}\n"
    )
    proc = subprocess.Popen(
        [binary(), "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited: {proc.stderr.read() if proc.stderr else ''}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=1).is_success:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("nginx did not answer within 10 s")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
