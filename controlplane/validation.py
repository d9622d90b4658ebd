"""What the control plane accepts from agents (and from its own static hosts file): hellos and
snapshots within sane bounds, so a rogue or buggy agent cannot hurt the fleet."""

from __future__ import annotations

from urllib.parse import urlsplit

from hops.v1 import agent_pb2

from controlplane.errors import InvalidRequest
from hopscommon.fleet import Hello
from hopscommon.labels import MAX_LABELS

MAX_NODE_ID = 128
MAX_MODELS = 5000
MAX_GPUS = 64
MAX_NAME = 512
MAX_BYTES = 2**50  # 1 PiB: beyond any host's memory or any model file


def validate_hello(hello: Hello) -> None:
    if not hello.node_id or len(hello.node_id) > MAX_NODE_ID or not hello.node_id.isprintable():
        raise InvalidRequest(f"node_id must be 1-{MAX_NODE_ID} printable characters")
    url = urlsplit(hello.ollama_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise InvalidRequest(f"ollama_url must be an http(s) URL, got {hello.ollama_url!r}")
    if len(hello.labels) > MAX_LABELS:
        raise InvalidRequest(f"at most {MAX_LABELS} labels")


def validate_snapshot(msg: agent_pb2.ConnectRequest) -> str:
    """Why a snapshot is unacceptable, or ''."""
    snap = msg.snapshot
    if len(snap.installed) > MAX_MODELS or len(snap.loaded) > MAX_MODELS:
        return f"more than {MAX_MODELS} models"
    if len(snap.gpus) > MAX_GPUS:
        return f"more than {MAX_GPUS} GPUs"
    if any(g.free_bytes > g.total_bytes or g.total_bytes > MAX_BYTES for g in snap.gpus):
        return "a GPU reports impossible memory figures"
    if snap.system_memory_free_bytes > snap.system_memory_total_bytes > 0 or (
        snap.system_memory_total_bytes > MAX_BYTES
    ):
        return "impossible system memory figures"
    sizes = [m.size_bytes for m in snap.installed] + [m.size_bytes for m in snap.loaded]
    if any(size > MAX_BYTES for size in sizes):
        return "a model larger than any machine"
    model_names = [m.name for m in snap.installed] + [m.name for m in snap.loaded]
    if any(not name or len(name) > MAX_NAME for name in model_names):
        return f"model names must be 1-{MAX_NAME} characters"
    return ""
