"""Where model-making requests go when the client names no host (``ollama create`` and
``ollama push`` cannot send X-Hops-Node): blobs to the host that already has them, else to one
chosen home; a create to every host that has what it is made from (its ``from`` model and
uploaded blobs); a push to a host with the model.

The edge keeps no state for this: it asks the hosts (``HEAD /api/blobs/{digest}``), so any edge
replica finds the blobs another one placed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from edge.inventory import Inventory, InventoryNode
from edge.upstream import with_host_headers
from hopscommon import names

LOOKUP_TIMEOUT_S = 10.0  # a blob lookup is a file check on the host: no answer by then is a no


async def blob_holders(
    client: httpx.AsyncClient,
    nodes: list[InventoryNode],
    digest: str,
    headers: list[tuple[bytes, bytes]],
) -> list[InventoryNode]:
    """The hosts among ``nodes`` that have the blob (a host that cannot be asked, or does not
    answer within LOOKUP_TIMEOUT_S, has not)."""

    async def has(node: InventoryNode) -> bool:
        try:
            response = await client.head(
                node.ollama_url.rstrip("/") + f"/api/blobs/{digest}",
                headers=with_host_headers(headers, node.headers),
                timeout=LOOKUP_TIMEOUT_S,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    found = await asyncio.gather(*(has(n) for n in nodes))
    return [n for n, yes in zip(nodes, found, strict=True) if yes]


def blob_home(inventory: Inventory) -> InventoryNode | None:
    """Where a new blob goes: the routable host holding the largest model (the one most likely
    to have room for another), ties by id, so every blob of one model lands on the same host
    while the fleet stays the same."""
    routable = [n for n in inventory.nodes if n.routable]
    if not routable:
        return None
    return min(
        routable, key=lambda n: (-max((m.size_bytes for m in n.installed), default=0), n.node_id)
    )


def create_needs(body: dict[str, Any]) -> tuple[str, list[str]]:
    """What a create is made from: its ``from`` model's key ('' if none) and the blob digests
    its ``files`` and ``adapters`` name."""
    source = body.get("from")
    key = (names.match_key(source) or "") if isinstance(source, str) else ""
    digests = []
    for field in ("files", "adapters"):
        value = body.get(field)
        if isinstance(value, dict):
            digests += [str(d) for d in value.values()]
    return key, digests


def progress_error(response: httpx.Response) -> str:
    """The error a create's answer carries: its status, or an error line in its progress."""
    if response.status_code >= 400:
        return f"{response.status_code} {response.text[:200]}"
    for line in response.text.splitlines():
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(item, dict) and "error" in item:
            return str(item["error"])[:200]
    return ""
