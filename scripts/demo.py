"""``make demo``: a whole local fleet serving the Ollama API on 127.0.0.1:11434.

Starts a control plane, four unlike simulated Ollama hosts (ollamasim profiles gpu-24g, gpu-12g,
gpu-8g, cpu), one node agent per host, and an edge on 127.0.0.1:11434, then prints how to try it.
``--ollama URL`` adds a real Ollama (e.g. http://127.0.0.1:11435) as one more node. Ctrl-C (or
SIGTERM, SIGHUP) stops everything.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOSTS = (("gpu-24g", "24GiB"), ("gpu-12g", "12GiB"), ("gpu-8g", "8GiB"), ("cpu", ""))


def start(children: list[subprocess.Popen[bytes]], *args: str) -> None:
    children.append(
        subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    )


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=11434, help="edge port (default 11434)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="control plane port")
    parser.add_argument(
        "--dashboard-port", type=int, default=9464, help="dashboard and metrics port"
    )
    parser.add_argument("--sim-port", type=int, default=11500, help="first simulated host port")
    parser.add_argument("--time-scale", default="1", help="simulator speed-up (default 1)")
    parser.add_argument("--ollama", default="", help="URL of a real Ollama to add as a node")
    args = parser.parse_args()
    plane = f"127.0.0.1:{args.grpc_port}"
    children: list[subprocess.Popen[bytes]] = []
    # Stopped by a signal other than Ctrl-C (kill, a supervisor, a closed terminal), the fleet
    # goes too: Python's default would end this process and leave its children running.
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _exit)
    try:
        start(
            children,
            "controlplane",
            "--listen",
            plane,
            "--metrics-listen",
            f"127.0.0.1:{args.dashboard_port}",
            "--log-level",
            "warning",
        )
        for i, (profile, vram) in enumerate(HOSTS):
            url = f"http://127.0.0.1:{args.sim_port + i}"
            start(
                children,
                "ollamasim",
                "--listen",
                url.removeprefix("http://"),
                "--profile",
                profile,
                "--time-scale",
                args.time_scale,
                "--seed",
                str(i),
            )
            gpu = ["--gpu", "static", "--gpu-memory", vram] if vram else ["--gpu", "none"]
            start(
                children,
                "nodeagent",
                "--controlplane",
                plane,
                "--ollama-url",
                url,
                "--node-id",
                profile,
                *gpu,
                "--log-level",
                "warning",
            )
        if args.ollama:
            start(
                children,
                "nodeagent",
                "--controlplane",
                plane,
                "--ollama-url",
                args.ollama,
                "--node-id",
                "real-ollama",
                "--log-level",
                "warning",
            )
        start(
            children,
            "edge",
            "--listen",
            f"127.0.0.1:{args.port}",
            "--controlplane",
            plane,
            "--log-level",
            "warning",
        )
        time.sleep(2.5)
        base = f"http://127.0.0.1:{args.port}"
        print(
            f"""
HOPS demo fleet is up (Ctrl-C stops it). Edge: {base}   control plane: {plane}
  hosts: {", ".join(p for p, _ in HOSTS)}{" + real-ollama" if args.ollama else ""}
  dashboard: http://127.0.0.1:{args.dashboard_port}/

Try it:
  curl {base}/api/tags
  curl {base}/api/generate -d '{{"model": "llama3.2", "prompt": "Hello"}}'
  curl -i {base}/api/chat -d '{{"model": "qwen2.5:14b", "messages": [{{"role": "user", "content": "hi"}}], "stream": false}}'
  curl {base}/api/ps
  OLLAMA_HOST={base} .venv/bin/python -c "import ollama; print(ollama.generate('llama3.2', 'Hello').response)"
  .venv/bin/python -c "import openai; c = openai.OpenAI(base_url='{base}/v1', api_key='none'); print(c.chat.completions.create(model='llama3.2', messages=[{{'role': 'user', 'content': 'hi'}}]).choices[0].message.content)"
  .venv/bin/hopsctl --controlplane {plane} nodes
  .venv/bin/grpcurl -plaintext {plane} hops.v1.AdminService/ListNodes
(The X-Hops-Node and X-Hops-Route response headers say which host answered and why.)
""",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("a fleet process exited; stopping the demo", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
