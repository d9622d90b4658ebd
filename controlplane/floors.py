"""The floor index of a BoundedPicker: per model key, every host that has the model, sorted by
its floor (a lower bound of any cost the policy gives a request for the model there) and then
its node id. A pick visits hosts in this order and stops once no host left could rank (see
Router._rank_bounded), so a big fleet builds only a handful of candidates per pick. Beside
each floor, the part of it a reply limit does not shrink (its waits), for picks asking one.

The index follows the fleet: ``refresh_all`` before each bounded pick takes in the hosts whose
hello or inventory changed, and the models that became or stopped being warm on a host or
had a load routed there (Fleet.rekeyed); ``refresh`` one (node, model) whose learned figures
moved. Runs on the control plane's event loop, called by the Router.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.fleet import Fleet, Node
from controlplane.policies import BoundedPicker, Candidate


@dataclass(slots=True)
class FloorIndex:
    fleet: Fleet
    # The candidate a host makes for a request for a model that asks nothing more of it.
    plain_candidate: Callable[[Node, str], Candidate]
    # Per model key, (floor, node id) sorted; per node, its floors by key.
    by_key: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    of_node: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per model key and node id, the part of its floor a reply limit does not shrink.
    fixed: dict[str, dict[str, float]] = field(default_factory=dict)
    policy: BoundedPicker | None = None  # whose floors these are

    def refresh_all(self, policy: BoundedPicker) -> None:
        """Bring the index up to date with the hosts whose hello or snapshot changed: every
        floor of a host whose hello, installed models or memory changed, else only those of the
        models that became or stopped being warm there."""
        if self.policy is not policy:  # a new policy: every floor is new
            self.by_key.clear()
            self.of_node.clear()
            self.fixed.clear()
            self.policy = policy
            self.fleet.reindexed.clear()
            self.fleet.rekeyed.clear()
            dirty: set[str] = set(self.fleet.nodes)
        else:
            dirty, self.fleet.reindexed = self.fleet.reindexed, set()
            rekeyed, self.fleet.rekeyed = self.fleet.rekeyed, {}
            for node_id, keys in rekeyed.items():
                node = self.fleet.nodes.get(node_id)
                if node is not None and node_id not in dirty:
                    for key in keys:
                        self.refresh(node, key)
        for node_id in dirty:
            old = self.of_node.pop(node_id, {})
            for key, floor in old.items():
                self._drop(key, floor, node_id)
            node = self.fleet.nodes.get(node_id)
            if node is None:
                continue
            floors = {key: self._add(node, key, policy) for key in node.installed_by_key}
            if floors:
                self.of_node[node_id] = floors

    def refresh(self, node: Node, key: str) -> None:
        """What was learned about (node, key) changed: so may its floor, and the floors of the
        copies its instance there serves (see Node.runner_key)."""
        policy = self.policy
        floors = self.of_node.get(node.node_id)
        if policy is None or floors is None:
            return  # not indexed (yet): the next full refresh computes it
        keys = [key]
        if node.aliases:
            keys += [alias for alias, listed in node.aliases.items() if listed == key]
        for each in keys:
            if each in floors:
                self._drop(each, floors[each], node.node_id)
                floors[each] = self._add(node, each, policy)

    def _add(self, node: Node, key: str, policy: BoundedPicker) -> float:
        plain = self.plain_candidate(node, key)
        floor, fixed = policy.floor(plain), policy.floor_fixed(plain)
        if floor != floor or fixed != fixed:  # NaN breaks the order: always look at such a host
            floor = fixed = -math.inf
        bisect.insort(self.by_key.setdefault(key, []), (floor, node.node_id))
        self.fixed.setdefault(key, {})[node.node_id] = fixed
        return floor

    def _drop(self, key: str, floor: float, node_id: str) -> None:
        order = self.by_key[key]
        del order[bisect.bisect_left(order, (floor, node_id))]
        del self.fixed[key][node_id]
        if not order:
            del self.by_key[key]
            del self.fixed[key]
