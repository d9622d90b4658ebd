"""Which failures count against a host's breaker. A host that fails requests is unwell; a
request that fails on every host it reaches is at fault itself (a wrongly typed option, an
image no runner can read, a prompt that crashes every runner), and must not open every breaker
in the fleet. So:
- a 5xx with an error text, whose request the edge tries on another host, is held on its lease
  until the next attempt's outcome: the same status and text there make it the request's own
  (``settle_held``);
- a failure with an error text that the same request (by its digest) met on another host
  lately, sent again by its client, is the request's own (``_failed_alike_elsewhere``).
Runs on the control plane's event loop, called by the Router.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from controlplane.fleet import Fleet, Node
from controlplane.leases import HeldFailure, Lease
from controlplane.model import Outcome, Report

log = logging.getLogger("hops.controlplane")
MAX_FAILURES = 1_000  # failed requests remembered, to tell one failing on every host
FAILURE_MEMORY_S = 600.0  # for this long


@dataclass(slots=True)
class Blame:
    fleet: Fleet
    # (request digest, status, error text) -> (the first node it failed on, when), oldest
    # first: see _failed_alike_elsewhere
    _failures: OrderedDict[tuple[str, int, str], tuple[str, float]] = field(
        default_factory=OrderedDict
    )

    def assign(self, node: Node, lease: Lease, report: Report, outcome: Outcome) -> Outcome:
        """Feed ``node``'s breaker ``report``'s ``outcome`` (as settle_held left it), or hold it
        on the lease for the next attempt; return the outcome as it counts."""
        detail = f"http {report.http_status}" if report.http_status else ""
        if outcome.is_host_failure and 200 <= report.http_status < 300:
            detail = f"failed mid-stream (http {report.http_status})"
        if report.error:
            detail = f"{detail}: {report.error}" if detail else report.error
        if _may_be_the_requests(report, outcome):
            lease.held = HeldFailure(node.node_id, report.http_status, report.error, detail)
            return outcome
        if self._failed_alike_elsewhere(report, outcome, node.node_id):
            outcome = Outcome.REQUEST_ERROR
        node.breaker.record(outcome, lease.lease_id, detail)
        return outcome

    def settle_held(self, lease: Lease, report: Report) -> Outcome:
        """Feed the breaker the failure the lease's previous attempt left held, now that the
        next one is known, and return ``report``'s outcome as it counts. The same error from the
        next host (the same status and text) follows the request, not the hosts: neither host is
        failed. Any other outcome leaves the held failure the host's own."""
        held, lease.held = lease.held, None
        if held is None:
            return report.outcome
        same = (
            report.outcome in (Outcome.UPSTREAM_ERROR, Outcome.REQUEST_ERROR)
            and report.http_status == held.http_status
            and report.error == held.error
        )
        node = self.fleet.nodes.get(held.node_id)
        if node is not None:
            outcome = Outcome.REQUEST_ERROR if same else Outcome.UPSTREAM_ERROR
            node.breaker.record(outcome, lease.lease_id, held.detail)
        if not same:
            return report.outcome
        log.info(
            "lease %s: %s and %s answered the same error, the request's own: %s",
            lease.lease_id,
            held.node_id,
            report.node_id or lease.node_id,
            report.error,
        )
        return Outcome.REQUEST_ERROR

    def drop_held(self, lease: Lease) -> None:
        """``lease`` ends with no next attempt to clear the failure it holds: its host's."""
        held, lease.held = lease.held, None
        if held is not None and held.node_id in self.fleet.nodes:
            self.fleet.nodes[held.node_id].breaker.record(
                Outcome.UPSTREAM_ERROR, lease.lease_id, held.detail
            )

    def _failed_alike_elsewhere(self, report: Report, outcome: Outcome, node_id: str) -> bool:
        """Whether this failure (one with an error text and the request's digest) is one the
        same request met on another host lately, with the same status and text: a prompt that
        crashes every runner it reaches, sent again by its client. Ollama cannot be asked twice
        once its reply began, so this is how such a request is told from a failing host: the
        first host it failed on pays one failure, the others none (the failures the same host
        meets again count, as they would for a host that fails everything)."""
        if not (outcome is Outcome.UPSTREAM_ERROR and report.error and report.request_digest):
            return False
        seen = (report.request_digest, report.http_status, report.error)
        now = time.monotonic()
        first = self._failures.get(seen)
        if first is not None and now - first[1] < FAILURE_MEMORY_S:
            if first[0] != node_id:
                log.info(
                    "%s failed a request as %s did: the request's own fault: %s",
                    node_id,
                    first[0],
                    report.error,
                )
                return True
            return False
        self._failures[seen] = (node_id, now)
        self._failures.move_to_end(seen)
        while len(self._failures) > MAX_FAILURES:
            self._failures.popitem(last=False)
        return False


def _may_be_the_requests(report: Report, outcome: Outcome) -> bool:
    """Whether a failure waits for the next attempt before it counts (see settle_held): a 5xx
    with an error text (not Ollama's busy 503: a full queue is the host's), whose request the
    edge is trying on another host."""
    return (
        outcome is Outcome.UPSTREAM_ERROR
        and report.http_status >= 500
        and report.http_status != 503
        and bool(report.error)
        and bool(report.retry_node_id)
    )
