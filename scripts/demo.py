"""``make demo``: bring up a local simulated fleet and serve the Ollama API on 127.0.0.1:11434.

Today this starts four unlike simulated Ollama hosts (ollamasim profiles gpu-24g, gpu-12g, gpu-8g,
cpu); the first answers on 127.0.0.1:11434, the others on the next ports. Ctrl-C stops them all.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

PROFILES = ("gpu-24g", "gpu-12g", "gpu-8g", "cpu")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=11434, help="first port (default 11434)")
    parser.add_argument("--time-scale", default="1", help="simulator speed-up (default 1)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    children: list[subprocess.Popen[bytes]] = []
    try:
        for i, profile in enumerate(PROFILES):
            port = args.port + i
            children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "ollamasim",
                        "--listen",
                        f"127.0.0.1:{port}",
                        "--profile",
                        profile,
                        "--time-scale",
                        args.time_scale,
                        "--seed",
                        str(i),
                    ],
                    cwd=root,
                )
            )
        time.sleep(1.0)
        print(
            """
Simulated fleet is up (Ctrl-C stops it):
"""
            + "\n".join(f"  {p:8} http://127.0.0.1:{args.port + i}" for i, p in enumerate(PROFILES))
            + f"""

Try it:
  curl http://127.0.0.1:{args.port}/api/tags
  curl http://127.0.0.1:{args.port}/api/generate -d '{{"model": "llama3.2", "prompt": "Hello"}}'
  .venv/bin/python -c "import ollama; print(ollama.Client('http://127.0.0.1:{args.port}').chat('llama3.2', messages=[{{'role': 'user', 'content': 'hi'}}]).message.content)"
  .venv/bin/python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:{args.port}/v1', api_key='x'); print(c.chat.completions.create(model='llama3.2', messages=[{{'role': 'user', 'content': 'hi'}}]).choices[0].message.content)"
""",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    sys.exit(main())
