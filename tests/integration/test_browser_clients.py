"""A web page calling the edge from real headless Chromium, as browser-based Ollama clients do:
from an origin Ollama allows, the preflighted call goes through and the page can read the reply
and X-Hops-Node; from any other origin the browser is refused before anything reaches a host."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.browser import browser
from tests.integration import fleet

pytestmark = pytest.mark.slow


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>client</title><p>a browser client</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[int]:
    """A plain page on 127.0.0.1 (reached as localhost, or as any *.test name)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _chat_from_page(edge: str) -> str:
    """What the page's script gets from a JSON POST with a HOPS header (so a preflight)."""
    body = json.dumps(
        {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    )
    return f"""fetch({json.dumps(edge + "/api/chat")}, {{
        method: "POST",
        headers: {{"Content-Type": "application/json", "X-Hops-Session": "tab-1"}},
        body: {json.dumps(body)},
    }}).then(async (r) => ({{
        status: r.status, node: r.headers.get("X-Hops-Node"), reply: await r.json()
    }})).catch((e) => ({{blocked: String(e)}}))"""


def test_a_page_from_an_allowed_origin_can_call_the_edge_and_others_cannot() -> None:
    with fleet.whole_fleet({"a": []}) as running, page_server() as port, browser() as tab:
        chats = running.sim_url("a") + "/_sim/stats"
        tab.do(op="goto", url=f"http://localhost:{port}/")  # Ollama allows localhost pages
        allowed = tab.do(op="eval", js=_chat_from_page(running.edge.url))["value"]
        assert allowed["status"] == 200 and allowed["node"] == "a", allowed
        assert allowed["reply"]["done"] and allowed["reply"]["message"]["content"]
        served = httpx.get(chats).json()["requests"]["/api/chat"]

        tab.do(op="goto", url=f"http://elsewhere.test:{port}/")  # an origin nobody allowed
        refused = tab.do(op="eval", js=_chat_from_page(running.edge.url))["value"]
        assert "Failed to fetch" in refused["blocked"], refused
        assert httpx.get(chats).json()["requests"]["/api/chat"] == served  # nothing reached it
