"""A fake Ollama that answers with fixed bytes (odd spacing, fields no Ollama has yet) and
remembers the last request exactly as received, to prove the edge relays bytes unchanged.

Run: python -m tests.fakes.echo_ollama --listen 127.0.0.1:0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hopscommon.net import bind

MODEL = {
    "name": "echo:latest",
    "model": "echo:latest",
    "modified_at": "2025-01-01T00:00:00Z",
    "size": 1000,
    "digest": "e" * 64,
    "details": {
        "format": "gguf",
        "family": "echo",
        "parameter_size": "1B",
        "quantization_level": "Q4_0",
    },
}
NDJSON_CHUNKS = [
    b'{"model":"echo","created_at":"2025-01-01T00:00:00Z","response":"Hel","done":false,'
    b'"novel_field":{"nested":[1,2,3]}}\n',
    b'{"model":"echo",  "created_at":"2025-01-01T00:00:00Z",'
    b'"response":"lo \\u00e9","done":false}\n',
    b'{"model":"echo","created_at":"2025-01-01T00:00:00Z","response":"","done":true,'
    b'"done_reason":"stop","eval_count":2,"eval_duration":1000,"future_metric":42,'
    b'"prompt_eval_count":-1}\n',  # a count no Ollama sends: data, not a crash
]
SSE_BYTES = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"hi","brand_new":true}}]}\n\ndata: [DONE]\n\n'
)
last: dict[str, str] = {}


async def record(request: Request) -> bytes:
    body = await request.body()
    last.update(
        body=base64.b64encode(body).decode(),
        path=request.url.path,
        headers=json.dumps(dict(request.headers)),
    )
    return body


async def generate(request: Request) -> Response:
    await record(request)

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in NDJSON_CHUNKS:
            yield chunk
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="application/x-ndjson")


async def chat_completions(request: Request) -> Response:
    await record(request)
    return Response(SSE_BYTES, media_type="text/event-stream")


def app() -> Starlette:
    async def version(request: Request) -> Response:
        return JSONResponse({"version": "0.13.0"})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [MODEL]})

    async def ps(request: Request) -> Response:
        return JSONResponse({"models": []})

    async def last_request(request: Request) -> Response:
        return JSONResponse(last)

    return Starlette(
        routes=[
            Route("/api/version", version),
            Route("/api/tags", tags),
            Route("/api/ps", ps),
            Route("/api/generate", generate, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/_echo/last", last_request),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:0")
    host, _, port = parser.parse_args().listen.rpartition(":")
    sock = bind(host, int(port))
    print(f"echo listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app(), log_level="error", lifespan="off"))
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
