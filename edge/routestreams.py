"""The Route stream clients: picks and reports as messages on one long-lived stream to a control
plane, several times cheaper for both sides than a unary call each. A pick waits for the answer
with its request id; a report goes without one, rides with the next pick (or after
REPORT_DELAY_S), and is sent again by the unary call if the stream breaks before a later answer
shows it applied. Two transports: a gRPC stream-stream call (RouteStream) and the control
plane's route socket (SocketRouteStream). Owned by the edge's event loop; ControlPlaneClient
opens and replaces them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Protocol

import grpc
from hops.v1 import router_pb2

from edge.routesocket import SocketCall

log = logging.getLogger("hops.edge")
REPORT_DELAY_S = 0.002  # while picks are in flight, a report waits this long for one to ride


class PickRefused(Exception):
    """The control plane refused the pick itself (the request is at fault, e.g. no model)."""


class StreamBroken(Exception):
    pass


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


class Duplex(Cancellable, Protocol):
    """What RouteStream needs of its transport: a gRPC stream-stream call (or a test's stand-in
    for one)."""

    async def write(self, request: router_pb2.RouteRequest) -> None: ...

    def __aiter__(self) -> AsyncIterator[router_pb2.RouteResponse]: ...


def abandon_calls(request_ids: Iterable[int], edge_id: str) -> list[router_pb2.RouteCall]:
    abandon = router_pb2.AbandonRequest(edge_id=edge_id)
    return [router_pb2.RouteCall(request_id=i, abandon=abandon) for i in request_ids]


class _Stream:
    """Picks matched to answers by id, reports sent without an answer, on some transport."""

    on_socket = False

    def __init__(
        self,
        call: Cancellable,
        lost_report: Callable[[router_pb2.ReportRequest], None] = lambda _: None,
        ids: Iterator[int] | None = None,
        abandoned: Callable[[list[int]], None] = lambda _: None,
    ) -> None:
        self.call = call
        self.retired = False  # another stream took over; this one ends once its picks are answered
        self.lost_report = lost_report  # reports the stream could not deliver go this way
        # When it breaks, the ids of the picks sent without an answer go this way, so that the
        # control plane is told and closes the leases their lost answers opened.
        self.abandoned = abandoned
        self.writing: list[router_pb2.RouteCall] = []
        self.pending: dict[int, asyncio.Future[router_pb2.PickResponse]] = {}
        self.unanswered: set[int] = set()  # picks whose callers stopped waiting for the answer
        # Reports written but maybe not read: the control plane handles a stream's calls in
        # order, so the answer to a pick written after a report says it was applied. If the
        # stream breaks first, they go again by the unary call (closing twice changes nothing).
        self.written = 0  # calls written on this stream
        self.picks_at: dict[int, int] = {}  # request id -> its place among them
        self.unconfirmed: deque[tuple[int, router_pb2.ReportRequest]] = deque()
        self.outbox: list[router_pb2.RouteCall] = []
        self.flush: asyncio.Handle | None = None  # sends queued reports if no pick does
        self.ids = ids if ids is not None else itertools.count(1)  # the edge's, across streams
        self.broken = False
        self.tasks = self._start()

    def _start(self) -> tuple[asyncio.Task[None], ...]:
        raise NotImplementedError

    def _flush(self) -> None:
        """Send what the outbox holds."""
        raise NotImplementedError

    async def pick(
        self,
        request: router_pb2.PickRequest,
        timeout: float,  # noqa: ASYNC109 - the pick's own deadline, as for the unary call
    ) -> router_pb2.PickResponse:
        request_id = next(self.ids)
        answer: asyncio.Future[router_pb2.PickResponse] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = answer
        self._send(router_pb2.RouteCall(request_id=request_id, pick=request))
        try:
            async with asyncio.timeout(timeout):
                return await answer
        finally:
            if self.pending.pop(request_id, None) is not None:  # gave up before the answer
                self.unanswered.add(request_id)

    def report(self, request: router_pb2.ReportRequest) -> None:
        """Queue a report. While picks are in flight (under load) it goes out with the next
        pick, or on its own after REPORT_DELAY_S, instead of costing both sides a message; else
        it goes once the event loop's current turn is over, so that the control plane applies
        it while nothing waits, not while the next pick waits for its answer."""
        if self.broken:  # nothing would send it now
            self.lost_report(request)
            return
        self.outbox.append(router_pb2.RouteCall(report=request))
        if self.flush is None:
            loop = asyncio.get_running_loop()
            self.flush = (
                loop.call_later(REPORT_DELAY_S, self._flush)
                if self.pending
                else loop.call_soon(self._flush)
            )

    def abandon(self, request_ids: Iterable[int], edge_id: str) -> None:
        """Tell the control plane that the answers to these picks (sent on a stream that broke)
        never arrived."""
        self.outbox += abandon_calls(request_ids, edge_id)
        self._flush()

    def _send(self, call: router_pb2.RouteCall) -> None:
        self.outbox.append(call)
        self._flush()

    def _wrote(self, calls: list[router_pb2.RouteCall]) -> None:
        for call in calls:
            self.written += 1
            if call.HasField("pick"):
                self.picks_at[call.request_id] = self.written
            elif call.HasField("report") and not call.report.retry_node_id:
                # (a lost move leaves the lease on the old host until its closing report)
                self.unconfirmed.append((self.written, call.report))

    def _answers(self, message: router_pb2.RouteResponse) -> None:
        for answer in message.answers:
            at = self.picks_at.pop(answer.request_id, 0)
            while self.unconfirmed and self.unconfirmed[0][0] < at:
                self.unconfirmed.popleft()
            waiter = self.pending.pop(answer.request_id, None)
            if waiter is None or waiter.done():
                self.unanswered.discard(answer.request_id)
                self._release(answer)
                continue
            if answer.invalid:
                waiter.set_exception(PickRefused(answer.invalid))
            else:
                waiter.set_result(answer.pick)
        if self.retired and not self.pending:
            self._break("replaced by the route socket")

    def _release(self, answer: router_pb2.RouteAnswer) -> None:
        """An answer for a pick whose caller stopped waiting (its client went away, or its
        deadline passed while the control plane held it in the wait queue): the lease it opened
        would hold a host's slot until its TTL, so it is closed as cancelled."""
        picked = answer.pick
        if picked.lease_id and picked.candidates:
            self.report(
                router_pb2.ReportRequest(
                    lease_id=picked.lease_id,
                    node_id=picked.candidates[0].node_id,
                    outcome=router_pb2.OUTCOME_CLIENT_CANCELLED,
                )
            )

    def _break(self, reason: str, closing: bool = False) -> None:
        if self.broken:
            return
        self.broken = True
        log.info("route stream ended: %s", reason)
        lost = [*self.pending, *self.unanswered]
        for waiter in self.pending.values():
            if not waiter.done():
                waiter.set_exception(StreamBroken(reason))
        self.pending.clear()
        self.unanswered.clear()
        unsent, self.writing, self.outbox = self.writing + self.outbox, [], []
        if self.flush is not None:
            self.flush.cancel()
        if not closing:  # (an edge closing ends its session, which releases its leases)
            for _, report in self.unconfirmed:  # written, but perhaps never read
                self.lost_report(report)
        self.unconfirmed.clear()
        for call in unsent:  # a report must not be lost with the stream: leases hang on it
            if call.HasField("report"):
                self.lost_report(call.report)
            elif call.HasField("abandon"):
                lost.append(call.request_id)
        if lost:
            self.abandoned(lost)
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.call.cancel()

    def retire(self) -> None:
        """Another stream took over: end this one once the picks it carries are answered (its
        unsent reports then go by the unary call)."""
        self.retired = True
        if not self.pending:
            self._break("replaced by the route socket")

    def close(self) -> None:
        self._break("edge closing", closing=True)


class RouteStream(_Stream):
    """A Route stream by gRPC: a writer task sends the queued calls, so calls made while a
    message is being written go out together in the next one; a reader task takes answers."""

    call: Duplex

    def __init__(
        self,
        call: Duplex,
        lost_report: Callable[[router_pb2.ReportRequest], None] = lambda _: None,
        ids: Iterator[int] | None = None,
        abandoned: Callable[[list[int]], None] = lambda _: None,
    ) -> None:
        self.queued = asyncio.Event()  # wakes the writer
        super().__init__(call, lost_report, ids, abandoned)

    def _start(self) -> tuple[asyncio.Task[None], ...]:
        return (asyncio.create_task(self._write()), asyncio.create_task(self._read()))

    def _flush(self) -> None:
        self.queued.set()  # the writer takes it from here

    async def _write(self) -> None:
        try:
            while True:
                await self.queued.wait()
                self.queued.clear()
                if self.flush is not None:
                    self.flush.cancel()
                    self.flush = None
                self.writing, self.outbox = self.outbox, []
                await self.call.write(router_pb2.RouteRequest(calls=self.writing))
                self._wrote(self.writing)
                self.writing = []
        except Exception as exc:  # noqa: BLE001 - any failure ends the stream, visibly
            self._break(f"write: {type(exc).__name__}: {exc}")

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self._answers(message)
                if self.broken:
                    return
            self._break("closed by the control plane")
        except grpc.aio.AioRpcError as exc:
            self._break(exc.code().name)
        except Exception as exc:  # noqa: BLE001 - any failure ends the stream, visibly
            self._break(f"read: {type(exc).__name__}: {exc}")


class SocketRouteStream(_Stream):
    """A Route stream on a route socket: calls are written as they are made, and answers
    handled as their bytes arrive, with no task in between (each task switch waits its turn in
    an event loop busy with streams)."""

    on_socket = True
    call: SocketCall

    def __init__(
        self,
        call: SocketCall,
        lost_report: Callable[[router_pb2.ReportRequest], None] = lambda _: None,
        ids: Iterator[int] | None = None,
        abandoned: Callable[[list[int]], None] = lambda _: None,
    ) -> None:
        super().__init__(call, lost_report, ids, abandoned)

    def _start(self) -> tuple[asyncio.Task[None], ...]:
        self.call.listen(self._answers, self._break)
        return ()

    def _flush(self) -> None:
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        if self.broken or not self.outbox:
            return
        self.writing, self.outbox = self.outbox, []
        try:
            self.call.send(router_pb2.RouteRequest(calls=self.writing))
        except ConnectionError as exc:
            self._break(f"write: {exc}")  # hands the unsent reports on
            return
        self._wrote(self.writing)
        self.writing = []
