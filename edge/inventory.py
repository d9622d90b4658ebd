"""The fleet as the edge last heard it, and the fleet-wide answers built from it (/api/tags,
/api/ps, /api/version, /v1/models) in Ollama's own shapes."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from hopscommon import labels, names
from hopscommon.fleet import Details, InstalledModel, LoadedModel
from hopscommon.labels import Labels
from hopscommon.ollama_versions import version_key


@dataclass(frozen=True, slots=True)
class InventoryNode:
    node_id: str
    ollama_url: str
    routable: bool
    ollama_version: str
    installed: tuple[InstalledModel, ...]
    loaded: tuple[LoadedModel, ...]
    # Headers every request to this host carries (hosts the control plane polls without an agent).
    headers: tuple[tuple[bytes, bytes], ...] = ()
    labels: Labels = ()  # its routing labels

    def has(self, key: str) -> bool:
        return any(names.match_key(m.name) == key for m in self.installed)

    def has_loaded(self, key: str) -> bool:
        return any(names.match_key(m.name) == key for m in self.loaded)


@dataclass(frozen=True, slots=True)
class Inventory:
    version: int = 0
    nodes: tuple[InventoryNode, ...] = ()
    received_at: float = field(default_factory=time.monotonic)
    # node id -> the headers every request to it carries, for the nodes that have any
    host_headers: dict[str, tuple[tuple[bytes, bytes], ...]] = field(default_factory=dict)

    def only(self, wanted: Labels) -> Inventory:
        """The fleet as a client restricted to hosts carrying ``wanted`` sees it."""
        if not wanted:
            return self
        nodes = tuple(n for n in self.nodes if labels.matches(dict(n.labels), wanted))
        return replace(self, nodes=nodes)

    def holders(self, key: str) -> list[InventoryNode]:
        return [n for n in self.nodes if n.has(key)]

    def fail_open_candidates(self, key: str, exclude: set[str]) -> list[InventoryNode]:
        """Without a control plane: routable holders, the ones with the model loaded first."""
        usable = [n for n in self.holders(key) if n.routable and n.node_id not in exclude]
        random.shuffle(usable)
        return sorted(usable, key=lambda n: not n.has_loaded(key))


def rfc3339(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC).astimezone()
    return moment.isoformat().replace("+00:00", "Z")


def _details(d: Details) -> dict[str, Any]:
    out: dict[str, Any] = {
        "parent_model": d.parent_model,
        "format": d.format or "gguf",
        "family": d.family,
        "families": list(d.families) or None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }
    if d.context_length:  # omitempty, as Ollama writes them
        out["context_length"] = d.context_length
    if d.embedding_length:
        out["embedding_length"] = d.embedding_length
    return out


def tags(inventory: Inventory) -> dict[str, Any]:
    """Union of installed models, newest first; one entry per name."""
    newest: dict[str, InstalledModel] = {}
    for node in inventory.nodes:
        for model in node.installed:
            seen = newest.get(model.name)
            if seen is None or model.modified_at > seen.modified_at:
                newest[model.name] = model
    ordered = sorted(newest.values(), key=lambda m: m.modified_at, reverse=True)
    return {
        "models": [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": rfc3339(m.modified_at),
                "size": m.size_bytes,
                "digest": m.digest,
                "details": _details(m.details),
                **({"capabilities": list(m.capabilities)} if m.capabilities else {}),
            }
            for m in ordered
        ]
    }


def ps(inventory: Inventory) -> dict[str, Any]:
    """Every loaded model on every host, longest remaining keep-alive first."""
    loaded = [m for node in inventory.nodes for m in node.loaded]
    loaded.sort(key=lambda m: m.expires_at, reverse=True)
    return {
        "models": [
            {
                "name": m.name,
                "model": m.name,
                "size": m.size_bytes,
                "digest": m.digest,
                "details": _details(m.details),
                "expires_at": rfc3339(m.expires_at),
                "size_vram": m.size_vram_bytes,
                "context_length": m.context_length,
            }
            for m in loaded
        ]
    }


def lowest_version(inventory: Inventory) -> str:
    """The oldest Ollama in the fleet, compared as versions (0.9.1 < 0.12.0), not strings."""
    versions = [n.ollama_version for n in inventory.nodes if n.ollama_version]
    return min(versions, key=version_key) if versions else "0.0.0"


def newest_first(inventory: Inventory) -> list[InventoryNode]:
    """The routable nodes, the newest Ollama first (then by id)."""
    routable = sorted((n for n in inventory.nodes if n.routable), key=lambda n: n.node_id)
    return sorted(routable, key=lambda n: version_key(n.ollama_version), reverse=True)


def _openai_model(model: InstalledModel, shown: str | None = None) -> dict[str, Any]:
    """`shown`: the name to answer with (a retrieve echoes the name as the client sent it)."""
    name = model.name if shown is None else shown
    parsed = names.parse(name)
    owner = (
        parsed.namespace
        if parsed is not None and parsed.namespace.casefold() != names.DEFAULT_NAMESPACE
        else "library"
    )
    return {
        "id": name,
        "object": "model",
        "created": int(model.modified_at),
        "owned_by": owner,
    }


def openai_models(inventory: Inventory) -> dict[str, Any]:
    entries = tags(inventory)["models"]
    by_name = {m.name: m for n in inventory.nodes for m in n.installed}
    data = [_openai_model(by_name[e["name"]]) for e in entries]
    return {"object": "list", "data": data or None}


def openai_model(inventory: Inventory, raw: str) -> dict[str, Any] | None:
    key = names.match_key(raw)
    for node in inventory.nodes:
        for model in node.installed:
            if key is not None and names.match_key(model.name) == key:
                return _openai_model(model, raw)
    return None
