"""Model management across the fleet: what `ollama stop`, `rm`, `cp`, `create` and `push`
and blob uploads do when the models live on several hosts. An unload, a delete or a copy applies
on every host that has the model; a create goes where its source model and blobs are, a push and
a blob upload to one host (or the one X-Hops-Node names). Answers wait, briefly, until the
inventory shows what they changed, so a client's next request finds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from edge import inventory as inv
from edge import placement
from edge.cpclient import ControlPlaneClient
from edge.errors import JSON_TYPE, BadRequest, EdgeError, ModelNotFound, NoHealthyHost
from edge.proxy import Call, Proxy, Result, StreamedBody, Target, wait_disconnect
from edge.reading import RequestReader, created_model
from edge.settings import EdgeSettings
from edge.upstream import Upstream, request_headers, with_host_headers
from hopscommon import labels, names
from hopscommon.labels import Labels

log = logging.getLogger("hops.edge")
FAN_OUT_TIMEOUT_S = 30.0  # an unload, delete or copy on a host: no answer by then is a failure
# How long a pull, create, copy or delete waits before answering for the inventory to show what
# it changed (agents see it at their next poll of /api/tags, each second by default).
SETTLE_S = 5.0
BLOBS = re.compile(r"/api/blobs/(?P<digest>[^/]+)")


class Management:
    def __init__(
        self,
        settings: EdgeSettings,
        cp: ControlPlaneClient,
        upstream: Upstream,
        proxy: Proxy,
        reader: RequestReader,
        inventory: Callable[[Labels], Awaitable[inv.Inventory]],
    ) -> None:
        self.settings = settings
        self.cp = cp
        self.upstream = upstream
        self.proxy = proxy
        self.reader = reader
        self.inventory = inventory  # the freshest usable inventory of the hosts with the labels

    async def unload(
        self, scope: Scope, receive: Receive, send: Send, raw: bytes, model: str, path: str
    ) -> Result:
        """Unload ``model`` everywhere: every connected host is asked, as the inventory may lag a
        load by a poll (where the model is not loaded Ollama answers the same and does nothing;
        a host without it answers 404). The reply is one host's own."""
        done = await self._on_every_host(scope, path, raw)
        if not done:
            raise ModelNotFound(f"model '{model}' not found")
        reply = done[0][1]
        content_type = reply.headers.get("content-type", JSON_TYPE)
        await Response(reply.content, media_type=content_type)(scope, receive, send)
        return Result(status=200, outcome="ok", route=path, node=_ids([n for n, _ in done]))

    async def fan_out(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[Result, str]:
        """/api/delete and /api/copy: apply to every host that has the model.

        Every connected host is asked (the inventory may lag a just-made copy by a poll); a 404
        from a host only means it had no such model. 404 overall when no host had it.
        """
        go_type = "DeleteRequest" if path == "/api/delete" else "CopyRequest"
        raw, body = await self.reader.json_body(scope, receive, go_type)
        if path == "/api/delete":
            model = body.get("model") or body.get("name")
            if not isinstance(model, str) or not model:
                raise BadRequest("model is required")
            missing = f"model '{model}' not found"
        else:
            model = body.get("source")
            if not isinstance(model, str) or not model or not body.get("destination"):
                raise BadRequest("source and destination are required")
            missing = f'model "{model}" not found'
        done = await self._on_every_host(scope, path, raw)
        if not done:
            raise ModelNotFound(missing)
        made, gone = (body.get("destination"), False) if path == "/api/copy" else (model, True)
        await self._settled((n.node_id for n, _ in done), str(made), gone=gone)
        await Response(b"", status_code=200)(scope, receive, send)
        return Result(status=200, outcome="ok", route=path, node=_ids([n for n, _ in done])), model

    async def _on_every_host(
        self, scope: Scope, path: str, raw: bytes
    ) -> list[tuple[inv.InventoryNode, httpx.Response]]:
        """_on_each for every connected host carrying the request's labels, or only the one
        its X-Hops-Node names."""
        headers = Headers(scope=scope)
        current = await self.inventory(self.reader.labels_of(headers))
        node_id = headers.get("x-hops-node", "")
        targets = [n for n in current.nodes if not node_id or n.node_id == node_id]
        return await self._on_each(scope, targets, path, raw)

    async def _on_each(
        self, scope: Scope, nodes: list[inv.InventoryNode], path: str, raw: bytes
    ) -> list[tuple[inv.InventoryNode, httpx.Response]]:
        """Send the request to every node at once; the nodes that answered 200, with their
        replies. A 404 only means that host has no such model; any other answer, or a host not
        reached or silent for FAN_OUT_TIMEOUT_S (these are bookkeeping on the host, not
        inference), fails the whole request, naming each host that failed."""
        headers = request_headers(scope["headers"])
        query = scope.get("query_string", b"").decode("latin-1")
        replies = await asyncio.gather(
            *(
                self.upstream.client.request(
                    scope["method"],
                    node.ollama_url.rstrip("/") + path + ("?" + query if query else ""),
                    content=raw,
                    headers=with_host_headers(headers, node.headers),
                    timeout=httpx.Timeout(FAN_OUT_TIMEOUT_S, connect=self.settings.connect_timeout),
                )
                for node in nodes
            ),
            return_exceptions=True,
        )
        done, failures = [], []
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, httpx.HTTPError):
                failures.append(f"{node.node_id}: {type(reply).__name__}")
            elif isinstance(reply, BaseException):
                raise reply
            elif reply.status_code == 200:
                done.append((node, reply))
            elif reply.status_code != 404:
                failures.append(f"{node.node_id}: {reply.status_code} {reply.text[:200]}")
        if failures:
            raise EdgeError(f"{path} failed on {len(failures)} hosts: " + "; ".join(failures))
        return done

    async def node_only(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> Result:
        """/api/create, /api/push and blobs belong to one host: the one named by X-Hops-Node, or,
        when none is named, the one (or, for a create, each one) that has what they need."""
        headers = Headers(scope=scope)
        node_id = headers.get("x-hops-node", "")
        wanted = self.reader.labels_of(headers)
        current = await self.inventory(wanted)
        blob = BLOBS.fullmatch(path)
        if not node_id:
            if blob is not None:
                return await self._blob(scope, receive, send, current, blob.group("digest"))
            return await self._placed(scope, receive, send, path, current)
        node = next((n for n in current.nodes if n.node_id == node_id), None)
        if node is None:
            everywhere = self.cp.inventory
            if wanted and everywhere and any(n.node_id == node_id for n in everywhere.nodes):
                shown = labels.shown(wanted)
                raise ModelNotFound(f"node '{node_id}' does not carry the labels {shown}")
            raise ModelNotFound(f"node '{node_id}' is not connected")
        streamed = blob is not None and method == "POST"
        body: bytes | Any = (
            StreamedBody(receive) if streamed else await self.reader.body(scope, receive)
        )
        target = Target(node.node_id, node.ollama_url, "x-hops-node", node.headers)
        call = Call.given(scope, body)
        if path == "/api/create" and isinstance(body, bytes):
            call.settle = self.settle_on(created_model(body))
        return await self.proxy.handle(call, receive, send, [target])

    def settle_on(self, model: str) -> Callable[[str], Awaitable[None]]:
        """A Call.settle: until ``model`` shows installed on the host that made it."""

        async def settle(node_id: str) -> None:
            await self._settled((node_id,), model)

        return settle

    async def _settled(self, node_ids: Iterable[str], model: str, *, gone: bool = False) -> None:
        """Wait, at most SETTLE_S, until the inventory shows ``model`` installed on every host
        in ``node_ids`` (``gone``: on none of them). Ollama answers a pull, create, copy or
        delete once it is done, and its clients go on at once (`ollama run` asks a show first,
        and pulls the model when the show is 404): they must find what they just made."""
        key = names.match_key(model)
        wanted = set(node_ids)
        if key is None or not wanted or not self.cp.connected.is_set():
            return  # no control plane: no inventory to wait for

        def shown(current: inv.Inventory) -> bool:
            return all(n.has(key) != gone for n in current.nodes if n.node_id in wanted)

        if not await self.cp.until(shown, SETTLE_S):
            log.warning(
                "model %s still %s in the inventory of %s after %.0fs",
                key,
                "listed" if gone else "missing",
                ",".join(sorted(wanted)),
                SETTLE_S,
            )

    async def _blob(
        self, scope: Scope, receive: Receive, send: Send, current: inv.Inventory, digest: str
    ) -> Result:
        """HEAD: whether any host has the blob. POST: nothing to do if one has it, else it goes
        to the blob home, where the create that uses it will find it."""
        routable = [n for n in current.nodes if n.routable]
        holders = await placement.blob_holders(
            self.upstream.client, routable, digest, request_headers(scope["headers"])
        )
        method = scope["method"]
        if method == "HEAD" or holders:
            status = 200 if holders else 404
            await Response(b"", status_code=status)(scope, receive, send)
            return Result(status=status, outcome="ok", route=scope["path"], node=_ids(holders))
        home = placement.blob_home(current)
        if home is None:
            raise NoHealthyHost("no host can take the blob now", retry_after=2.0)
        target = Target(home.node_id, home.ollama_url, "blob-home", home.headers)
        call = Call.given(scope, StreamedBody(receive))
        return await self.proxy.handle(call, receive, send, [target])

    async def _placed(
        self, scope: Scope, receive: Receive, send: Send, path: str, current: inv.Inventory
    ) -> Result:
        """A create goes to every routable host that has its ``from`` model and blobs (one
        streams its progress; several are made one after another and answered together); a
        push to the first routable host that has the model."""
        go_type = "CreateRequest" if path == "/api/create" else "PushRequest"
        raw, body = await self.reader.json_body(scope, receive, go_type)
        routable = [n for n in current.nodes if n.routable]
        if path == "/api/push":
            model = body.get("model") or body.get("name")
            key = names.match_key(model) if isinstance(model, str) else None
            targets = [n for n in routable if key and n.has(key)]
            if not targets:
                raise ModelNotFound(f"model '{model}' not found")
        else:
            targets = await self._create_targets(scope, body, routable)
        found = [Target(n.node_id, n.ollama_url, "has-model", n.headers) for n in targets]
        call = Call.given(scope, raw)
        if path == "/api/push":
            return await self.proxy.handle(call, receive, send, found)
        call.settle = self.settle_on(created_model(raw))
        if len(found) == 1:
            return await self.proxy.handle(call, receive, send, found)
        return await self._create_on_each(scope, receive, send, raw, targets, call.settle)

    async def _create_targets(
        self, scope: Scope, body: dict[str, Any], routable: list[inv.InventoryNode]
    ) -> list[inv.InventoryNode]:
        source, digests = placement.create_needs(body)
        if source:
            routable = [n for n in routable if n.has(source)]
            if not routable:
                raise ModelNotFound(f"model '{body.get('from')}' not found")
        elif not digests:
            raise BadRequest("neither 'from' nor 'files' was specified")
        headers = request_headers(scope["headers"])
        for digest in digests:
            routable = await placement.blob_holders(self.upstream.client, routable, digest, headers)
        if not routable:
            raise BadRequest(
                "no host has every blob this model is made from (upload them first, or name "
                "the host that has them with X-Hops-Node)"
            )
        return routable

    async def _create_on_each(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw: bytes,
        nodes: list[inv.InventoryNode],
        settle: Callable[[str], Awaitable[None]],
    ) -> Result:
        """The same create on several hosts, one after another; the client gets the first
        host's answer if every host succeeded (once the inventory shows the model on each, by
        ``settle``), else an error naming those that failed. A client that leaves stops it: the
        host creating now sees its request closed, the rest are not asked."""
        headers = request_headers(scope["headers"])

        async def make_each() -> tuple[list[httpx.Response], list[str]]:
            answers, failures = [], []
            for node in nodes:
                try:
                    response = await self.upstream.client.post(
                        node.ollama_url.rstrip("/") + "/api/create",
                        content=raw,
                        headers=with_host_headers(headers, node.headers),
                    )
                except httpx.HTTPError as exc:
                    failures.append(f"{node.node_id}: {type(exc).__name__}")
                    continue
                error = placement.progress_error(response)
                if error:
                    failures.append(f"{node.node_id}: {error}")
                else:
                    answers.append(response)
            if not failures:
                await asyncio.gather(*(settle(node.node_id) for node in nodes))
            return answers, failures

        work = asyncio.ensure_future(make_each())
        gone = asyncio.ensure_future(wait_disconnect(receive))  # the body is read: only a leave
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            return Result(outcome="client_cancelled", route="/api/create", node=_ids(nodes))
        answers, failures = work.result()
        if failures:
            raise EdgeError(
                f"create failed on {len(failures)} of {len(nodes)} hosts: " + "; ".join(failures)
            )
        first = answers[0]
        await Response(
            first.content,
            status_code=first.status_code,
            media_type=first.headers.get("content-type"),
        )(scope, receive, send)
        return Result(status=first.status_code, outcome="ok", route="/api/create", node=_ids(nodes))


def _ids(nodes: list[inv.InventoryNode]) -> str:
    return ",".join(n.node_id for n in nodes) or "-"
