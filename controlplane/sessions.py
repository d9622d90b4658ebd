"""Session affinity, and the prompt caches it aims for: per conversation (a session key), the
host and model it last ran on and the length of its prompt there; per (host, model instance),
the conversations whose prompts its parallel slots hold. Runs on the control plane's event
loop, called by the Router.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from controlplane.fleet import Fleet

MAX_SESSIONS = 10_000


@dataclass(slots=True)
class Sessions:
    fleet: Fleet
    # Per session key: the node and model key it last ran on, and that request's prompt tokens
    # (what the node's prompt cache holds of the conversation). Least recently run first.
    last: OrderedDict[str, tuple[str, str, int]] = field(default_factory=OrderedDict)
    # Per (node id, model instance key), the sessions it served last, newest first, as many as
    # it has parallel slots: Ollama's runner keeps one cached prompt per slot and gives a new
    # conversation the slot of the oldest, so a session further back has lost its prefix.
    _slots: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def affinity(self, session_key: str, key: str) -> str:
        """The node this session last ran on, if it is still up with the model loaded."""
        if not session_key:
            return ""
        seen = self.last.get(session_key)
        if seen is None or seen[1] != key:
            return ""
        node = self.fleet.nodes.get(seen[0])
        if node is None or node.session is None or node.runner_key(key) not in node.loaded_by_key:
            del self.last[session_key]  # the host left or unloaded the model: forget
            return ""
        return seen[0]

    def cached_tokens(self, session_key: str, affinity_node: str, key: str) -> int:
        """How much of this session's prompt its host (``affinity_node``) has cached: the
        prompt of its last request there (its reply is cached too, but is not counted), unless
        as many other sessions have run there since as the instance has slots."""
        if not affinity_node:
            return 0
        runner = self.fleet.nodes[affinity_node].runner_key(key)
        if session_key not in self._slots.get((affinity_node, runner), ()):
            return 0
        return self.last[session_key][2]

    def cache_victim(self, node_id: str, key: str, session_key: str, slots: int) -> int:
        """The prompt tokens of the conversation whose cached prompt this session would take
        over on ``node_id``'s instance of ``key`` (0 = none): when as many other conversations
        hold its slots as it has, the least recently served one, if that is where it last ran
        (its next turn there then evaluates it all again)."""
        served = self._slots.get((node_id, key))
        if not served or len(served) < max(slots, 1) or session_key in served:
            return 0
        victim = self.last.get(served[-1])
        return victim[2] if victim is not None and victim[0] == node_id else 0

    def ran(
        self,
        session_key: str,
        node_id: str,
        model: str,
        instance: str,
        prompt_tokens: int,
        slots: int,
    ) -> None:
        """Session ``session_key`` (none: "") was routed to ``node_id`` for ``model``, served
        there by the instance ``instance`` with ``slots`` parallel slots, with a prompt of
        ``prompt_tokens``."""
        if not session_key:
            return
        self.last[session_key] = (node_id, model, prompt_tokens)
        self.last.move_to_end(session_key)
        while len(self.last) > MAX_SESSIONS:
            self.last.popitem(last=False)
        served = self._slots.setdefault((node_id, instance), [])
        if session_key in served:
            served.remove(session_key)
        served.insert(0, session_key)
        del served[max(slots, 1) :]
