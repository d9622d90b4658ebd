"""One routed request end to end: Pick, try candidates until one answers before any byte has
reached the client, relay its bytes unchanged, Report the outcome.

Retry rule: connect failures, connect timeouts, no first byte in time, a reset before the
response, and 5xx answers (Ollama's busy 503 among them) move on to the next candidate, bounded by
``max_attempts``; but not a 500 whose error Ollama gives for the request's own fault (a wrongly
typed option, an invalid format, an unreadable image): any host would answer it the same, so it
goes to the client at once. A failure's report carries its error text (a 5xx's, or the line
that ends a stream) and a digest of the request, for the control plane to tell a host's
failure from the request's (controlplane.blame). Once the first byte went out there is no
retry: a failure mid-stream ends the stream with an Ollama-style error line. A client that goes
away closes the upstream connection at once (that is what stops Ollama generating) and the lease
is reported cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import httpx
from hops.v1 import router_pb2
from starlette.types import Receive, Scope, Send

from edge.cpclient import ControlPlaneClient, ControlPlaneUnavailable
from edge.errors import (
    ANTHROPIC,
    OLLAMA,
    OPENAI,
    BadRequest,
    ControlPlaneDown,
    EdgeError,
    ModelNotFound,
    NoHealthyHost,
    UpstreamFailed,
    UpstreamTimeout,
    error_body,
    error_response,
)
from edge.metrics import EdgeMetrics
from edge.replies import (
    TAIL_BYTES,
    error_reply,
    error_text,
    final_stats,
    in_band_failure,
    requests_fault,
)
from edge.routestreams import PickRefused
from edge.settings import EdgeSettings
from edge.upstream import (
    Reply,
    Upstream,
    request_headers,
    response_headers,
    with_host_headers,
)
from hopscommon import names
from hopscommon.fleet_convert import duration
from hopscommon.labels import Labels
from hopscommon.runner_options import RunnerOptions

log = logging.getLogger("hops.edge")
STREAM_ERROR = "stream_error"  # the access log's outcome for Ollama's in-band failure
RETRYABLE = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.PoolTimeout,
    httpx.RemoteProtocolError,
    httpx.ReadError,
    httpx.WriteError,
)


EMBEDDING_APIS = frozenset(
    {
        router_pb2.API_KIND_EMBED,
        router_pb2.API_KIND_EMBEDDINGS,
        router_pb2.API_KIND_OPENAI_EMBEDDINGS,
    }
)


@dataclass(slots=True)
class Call:
    """What the edge knows about one routed request."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | AsyncIterator[bytes]
    model: str
    api: int
    route: str
    dialect: str  # whose error shape: edge.errors.OLLAMA, OPENAI or ANTHROPIC
    not_found: str
    session_key: str = ""
    node_id: str = ""
    labels: Labels = ()  # the labels every host it may use must carry (X-Hops-Labels)
    prompt_tokens: int = 0  # about how long its prompt is (see edge.reading.prompt_tokens)
    longest_input: int = 0  # an embedding's longest input (see edge.reading.longest_input)
    max_reply: int = 0  # the most tokens the reply may run to (see edge.reading.max_reply); 0 = any
    num_ctx: int = 0  # the context length asked for (options.num_ctx); 0 = none
    runner_options: RunnerOptions = ()  # the other load-time options asked for
    # Awaited with the host's id once its reply ended well, before the response ends: until
    # what the reply made (a pulled or created model) shows in the inventory.
    settle: Callable[[str], Awaitable[None]] | None = None

    @classmethod
    def given(cls, scope: Scope, body: bytes | AsyncIterator[bytes]) -> Call:
        """A request for hosts the edge gives, not picked: no lease, Ollama's errors."""
        return cls(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b""),
            headers=request_headers(scope["headers"]),
            body=body,
            model="-",
            api=0,
            route=scope["path"],
            dialect=OLLAMA,
            not_found="",
        )


@dataclass(slots=True)
class Target:
    node_id: str
    url: str
    reason: str
    headers: tuple[tuple[bytes, bytes], ...] = ()  # the host's own, from the inventory


@dataclass(slots=True)
class Result:
    """What happened, for the log line and the metrics."""

    node: str = "-"
    status: int = 0
    ttfb: float = 0.0
    attempts: int = 0
    outcome: str = "unknown"
    route: str = ""
    reasons: list[str] = field(default_factory=list)


class AbortConnection(Exception):
    """Raised after the response started to make the server cut the client's connection."""


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamedBody:
    """A request body passed upstream as it arrives (a blob upload), not read first. The
    client's messages are its chunks until the last one; ``done`` is set then (or when the
    client leaves), and only after that may anyone else wait on them for a disconnect."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.done = asyncio.Event()

    def __aiter__(self) -> StreamedBody:
        return self

    async def __anext__(self) -> bytes:
        if self.done.is_set():
            raise StopAsyncIteration
        message = await self.receive()
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            self.done.set()
        if message["type"] == "http.disconnect":
            raise StopAsyncIteration
        chunk: bytes = message.get("body", b"")
        return chunk


class Proxy:
    def __init__(
        self,
        settings: EdgeSettings,
        cp: ControlPlaneClient,
        upstream: Upstream,
        metrics: EdgeMetrics,
    ) -> None:
        self.settings = settings
        self.cp = cp
        self.upstream = upstream
        self.metrics = metrics

    async def handle(
        self, call: Call, receive: Receive, send: Send, targets: list[Target] | None = None
    ) -> Result:
        """Serve ``call`` (on ``targets`` when given, without a lease; else as picked); the client
        leaving at any point cancels the work, and with it the upstream request."""
        result = Result(route=call.route)
        # The work runs in this task (a task of its own would wait a turn of the event loop
        # before its pick goes out); a watcher cancels it when the client goes.
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            if isinstance(call.body, StreamedBody):
                await call.body.done.wait()  # its messages are the body's until then
            await wait_disconnect(receive)
            gone = True
            task.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self._serve(call, send, result, targets)
        except asyncio.CancelledError:
            if not gone or task.uncancel() > 0:  # cancelled by someone else (shutdown) too
                raise
            result.outcome = "client_cancelled"
        finally:
            watcher.cancel()
        return result

    async def _serve(
        self, call: Call, send: Send, result: Result, given: list[Target] | None
    ) -> None:
        try:
            lease, plane, targets = ("", "", given) if given else await self._route(call)
        except EdgeError as exc:
            result.status, result.outcome = exc.status, "rejected"
            await error_response(exc, dialect=call.dialect)({"type": "http"}, _no_receive, send)
            return
        await self._attempts(call, send, result, lease, plane, targets)

    async def _route(self, call: Call) -> tuple[str, str, list[Target]]:
        request = router_pb2.PickRequest(
            model=call.model,
            api=router_pb2.ApiKind.ValueType(call.api),
            session_key=call.session_key,
            node_id=call.node_id,
            max_candidates=self.settings.max_attempts,
            num_ctx=call.num_ctx,
            prompt_tokens=call.prompt_tokens,
            longest_input_tokens=call.longest_input,
            max_reply_tokens=call.max_reply,
        )
        if call.runner_options:
            request.runner_options.update(call.runner_options)
        if call.labels:
            request.label_selector.update(call.labels)
        started = time.monotonic()
        try:
            picked, plane = await self.cp.pick(request)
            self.metrics.pick.observe(time.monotonic() - started)
        except ControlPlaneUnavailable:
            return "", "", self._fail_open(call)
        except grpc.aio.AioRpcError as exc:  # the control plane refused the request itself
            raise BadRequest(exc.details() or "bad request") from None
        except PickRefused as exc:
            raise BadRequest(str(exc)) from None
        status = picked.status
        if status == router_pb2.PICK_STATUS_OK:
            return (
                picked.lease_id,
                plane,
                [
                    Target(c.node_id, c.ollama_url, c.reason, self._host_headers(c.node_id))
                    for c in picked.candidates
                ],
            )
        if status == router_pb2.PICK_STATUS_MODEL_NOT_FOUND:
            raise ModelNotFound(call.not_found)
        if status == router_pb2.PICK_STATUS_NODE_NOT_FOUND:
            raise ModelNotFound(picked.message or f"node '{call.node_id}' is not connected")
        retry = picked.retry_after.ToNanoseconds() / 1e9 if picked.HasField("retry_after") else 2.0
        raise NoHealthyHost(
            picked.message or "no healthy host can serve this model now", retry_after=retry
        )

    def _fail_open(self, call: Call) -> list[Target]:
        inventory = self.cp.inventory
        age = time.monotonic() - self.cp.last_contact
        if (
            inventory is None
            or self.settings.fail_open_for <= 0
            or age > self.settings.fail_open_for
        ):
            raise ControlPlaneDown(
                "control plane unreachable and no usable inventory", retry_after=2.0
            )
        inventory = inventory.only(call.labels)
        key = names.match_key(call.model) or call.model
        nodes = inventory.fail_open_candidates(key, set())
        if call.node_id:
            nodes = [n for n in nodes if n.node_id == call.node_id]
        if not nodes:
            if not inventory.holders(key):
                raise ModelNotFound(call.not_found)
            raise NoHealthyHost("no healthy host can serve this model now", retry_after=2.0)
        self.metrics.fail_open.inc()
        return [Target(n.node_id, n.ollama_url, "fail-open", n.headers) for n in nodes]

    def _host_headers(self, node_id: str) -> tuple[tuple[bytes, bytes], ...]:
        inventory = self.cp.inventory
        return inventory.host_headers.get(node_id, ()) if inventory is not None else ()

    async def _attempts(
        self, call: Call, send: Send, result: Result, lease: str, plane: str, targets: list[Target]
    ) -> None:
        targets = targets[: self.settings.max_attempts]
        last_error: EdgeError = UpstreamFailed("no host could be reached")
        for index, target in enumerate(targets):
            following = targets[index + 1].node_id if index + 1 < len(targets) else ""
            result.attempts += 1
            result.node = target.node_id
            result.reasons.append(target.reason)
            started = time.monotonic()
            try:
                response = await self.upstream.send(
                    target.url,
                    call.method,
                    call.path,
                    call.query,
                    with_host_headers(call.headers, target.headers),
                    call.body,
                )
            except RETRYABLE as exc:
                outcome = (
                    router_pb2.OUTCOME_TIMEOUT
                    if isinstance(exc, httpx.ReadTimeout)
                    else router_pb2.OUTCOME_CONNECT_ERROR
                )
                last_error = (
                    UpstreamTimeout if isinstance(exc, httpx.ReadTimeout) else UpstreamFailed
                )(f"host {target.node_id}: {type(exc).__name__}")
                self._report(plane, lease, target.node_id, outcome, 0, started, following)
                self.metrics.retries.labels(type(exc).__name__).inc()
                continue
            except asyncio.CancelledError:
                self._report(
                    plane,
                    lease,
                    target.node_id,
                    router_pb2.OUTCOME_CLIENT_CANCELLED,
                    0,
                    started,
                    "",
                )
                raise
            if (
                response.status_code >= 500
                and following
                and not isinstance(call.body, AsyncIterator)
            ):
                busy = response.status_code == 503
                read = None if busy else await error_reply(response)
                error = error_text(read.body) if read is not None else ""
                if read is not None and requests_fault(error):
                    # Any host would answer the same: this one's answer is the client's.
                    await self._relay(call, send, result, read, target, started, lease, plane)
                    return
                await response.aclose()
                self._report(
                    plane,
                    lease,
                    target.node_id,
                    router_pb2.OUTCOME_BUSY if busy else router_pb2.OUTCOME_UPSTREAM_ERROR,
                    response.status_code,
                    started,
                    following,
                    error=error,
                    digest=_digest(call) if error else "",
                )
                self.metrics.retries.labels(f"http_{response.status_code}").inc()
                continue
            await self._relay(call, send, result, response, target, started, lease, plane)
            return
        result.status, result.outcome = last_error.status, "upstream_failed"
        await error_response(last_error, dialect=call.dialect)({"type": "http"}, _no_receive, send)

    async def _relay(
        self,
        call: Call,
        send: Send,
        result: Result,
        response: Reply,
        target: Target,
        started: float,
        lease: str,
        plane: str,
    ) -> None:
        result.status = response.status_code
        headers = response_headers(response)
        headers.append((b"x-hops-node", target.node_id.encode()))
        headers.append((b"x-hops-route", target.reason.encode()))
        content_type = response.headers.get("content-type", "")
        tail: deque[bytes] = deque()  # the last chunks, at least TAIL_BYTES of them
        tail_size = 0
        outcome = router_pb2.OUTCOME_OK
        if 400 <= response.status_code < 500:
            outcome = router_pb2.OUTCOME_CLIENT_ERROR
        elif response.status_code >= 500:
            outcome = (
                router_pb2.OUTCOME_BUSY
                if response.status_code == 503
                else router_pb2.OUTCOME_UPSTREAM_ERROR
            )
        ttfb = 0.0
        error = ""  # a 5xx's error text, or the one ending a stream, for the control plane
        # An OpenAI-compatible stream carries no durations and, unless its client asked, no
        # usage: its events are counted so its length and decode speed can still be learned.
        count_events = call.dialect == OPENAI and "event-stream" in content_type
        streamed = "event-stream" in content_type or "ndjson" in content_type
        events = 0
        finished = 0.0  # when the last byte went out, for a reply that ended well
        self.metrics.open_streams.inc()
        try:
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            ttfb = time.monotonic() - started
            result.ttfb = ttfb
            chunks = response.aiter_raw()
            while True:
                try:
                    async with asyncio.timeout(self.settings.idle_timeout):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if count_events:
                    events += chunk.count(b"data: {")
                tail.append(chunk)
                tail_size += len(chunk)
                while tail_size - len(tail[0]) >= TAIL_BYTES:
                    tail_size -= len(tail.popleft())
            # Judged before the last send: a client that leaves on reading the error line
            # may cancel it.
            if outcome == router_pb2.OUTCOME_OK:
                failure = in_band_failure(b"".join(tail), content_type, call.path)
                if failure is not None:
                    outcome = self._failed_mid_stream(target, result)
                    error = failure
            if outcome == router_pb2.OUTCOME_OK and call.settle is not None:
                await call.settle(target.node_id)
            if outcome == router_pb2.OUTCOME_UPSTREAM_ERROR and response.status_code >= 500:
                error = error_text(b"".join(tail))
                if requests_fault(error):
                    outcome = router_pb2.OUTCOME_REQUEST_ERROR
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            if result.outcome != STREAM_ERROR:
                result.outcome = (
                    "ok" if outcome == router_pb2.OUTCOME_OK else f"http_{response.status_code}"
                )
            if outcome == router_pb2.OUTCOME_OK:
                finished = time.monotonic() - started
        except (TimeoutError, httpx.HTTPError) as exc:
            outcome = (
                router_pb2.OUTCOME_TIMEOUT
                if isinstance(exc, TimeoutError)
                else router_pb2.OUTCOME_UPSTREAM_ERROR
            )
            result.outcome = "midstream_error"
            message = (
                f"upstream host {target.node_id} stopped sending for "
                f"{self.settings.idle_timeout:.0f}s"
                if isinstance(exc, TimeoutError)
                else f"upstream host {target.node_id} failed mid-stream: {type(exc).__name__}"
            )
            await self._end_with_error(send, content_type, message, call.dialect, response)
        except asyncio.CancelledError:
            if result.outcome == STREAM_ERROR:
                pass  # the host failed first
            elif (
                outcome == router_pb2.OUTCOME_OK
                and "ndjson" in content_type
                and (failure := in_band_failure(b"".join(tail), content_type, call.path))
                is not None
            ):  # Ollama's error line ends its stream: the client left after the host failed
                outcome = self._failed_mid_stream(target, result)
                error = failure
            else:
                outcome = router_pb2.OUTCOME_CLIENT_CANCELLED
            raise
        finally:
            self.metrics.open_streams.dec()
            await response.aclose()
            stats = final_stats(
                b"".join(tail), ttfb, finished, events - 1 if count_events else 0, streamed
            )
            if stats is not None and call.api not in EMBEDDING_APIS:
                # The token metrics are generations' (what prompt caches keep of them).
                self._count_tokens(target.node_id, stats)
            self._report(
                plane,
                lease,
                target.node_id,
                outcome,
                response.status_code,
                started,
                "",
                ttfb=ttfb,
                error=error,
                digest=_digest(call) if error else "",
                stats=stats,
            )

    def _failed_mid_stream(self, target: Target, result: Result) -> router_pb2.Outcome.ValueType:
        """The host's runner failed after its 2xx went out: the client has Ollama's word for
        it; the host's breaker must hear it too. Returns the outcome to report."""
        result.outcome = STREAM_ERROR
        self.metrics.stream_errors.labels(target.node_id).inc()
        return router_pb2.OUTCOME_UPSTREAM_ERROR

    async def _end_with_error(
        self,
        send: Send,
        content_type: str,
        message: str,
        dialect: str,
        response: Reply,
    ) -> None:
        if "ndjson" in content_type:
            line = json.dumps({"error": message}).encode() + b"\n"
        elif "event-stream" in content_type and dialect == ANTHROPIC:
            line = b"event: error\ndata: " + error_body(500, message, dialect=dialect) + b"\n\n"
        elif "event-stream" in content_type:
            line = b"data: " + error_body(500, message, dialect=OPENAI) + b"\n\n"
        else:
            # A fixed-length body cannot take an error line: cut the connection so the client
            # sees a failed response, never a silently truncated one.
            raise AbortConnection(message)
        await send({"type": "http.response.body", "body": line, "more_body": False})

    def _report(
        self,
        plane: str,
        lease: str,
        node_id: str,
        outcome: int,
        status: int,
        started: float,
        retry_node: str,
        *,
        ttfb: float = 0.0,
        stats: router_pb2.GenerationStats | None = None,
        error: str = "",
        digest: str = "",
    ) -> None:
        if not lease:
            return
        request = router_pb2.ReportRequest(
            lease_id=lease,
            node_id=node_id,
            outcome=outcome,  # type: ignore[arg-type]
            http_status=status,
            retry_node_id=retry_node,
            error=error,
            request_digest=digest,
            time_to_first_byte=duration(ttfb),
            duration=duration(time.monotonic() - started),
        )
        if stats is not None:
            request.stats.CopyFrom(stats)
        self.cp.send_report(plane, request)

    def _count_tokens(self, node_id: str, stats: router_pb2.GenerationStats) -> None:
        self.metrics.prompt_tokens.labels(node_id).inc(stats.prompt_eval_count)
        self.metrics.prompt_cached_tokens.labels(node_id).inc(stats.prompt_eval_cached_count)
        self.metrics.generated_tokens.labels(node_id).inc(stats.eval_count)


def _digest(call: Call) -> str:
    """A digest of the request as the client sent it (its route and body), for a failure's
    report; "" for a body passed on as it arrived (never held whole)."""
    if not isinstance(call.body, bytes):
        return ""
    return hashlib.sha256(call.path.encode() + b"\n" + call.body).hexdigest()[:32]


async def _no_receive() -> dict[str, object]:
    return {"type": "http.disconnect"}
