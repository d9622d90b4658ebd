"""``hopsctl``: a small command-line client of the control plane's AdminService.

    hopsctl nodes                     hopsctl cordon NODE / uncordon NODE
    hopsctl node NODE                 hopsctl drain NODE [--wait 60s]
    hopsctl models                    hopsctl pull NODE MODEL
    hopsctl policy [NAME]             hopsctl unload NODE MODEL / preload NODE MODEL

Connection flags (or HOPS_CTL_* variables): --controlplane, --token, --tls-ca, --tls-cert,
--tls-key. --json prints the RPC's answer as JSON instead of a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from hops.v1 import admin_pb2, admin_pb2_grpc

from hopscommon import names
from hopscommon.tls import client_credentials
from hopscommon.units import parse_seconds

ENV = "HOPS_CTL_"
GiB = 1024**3


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def gib(n: int) -> str:
    return f"{n / GiB:.1f}G"


def short(enum: Any, value: int, prefix: str) -> str:
    """``value``'s name in ``enum`` without ``prefix``, lowercased; a value this hopsctl does
    not know (a newer control plane's) as its number."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def node_rows(nodes: Sequence[admin_pb2.Node]) -> str:
    rows = []
    for n in nodes:
        snap = n.snapshot
        total = sum(g.total_bytes for g in snap.gpus)
        free = sum(g.free_bytes for g in snap.gpus)
        flags = [f for f, on in (("cordoned", n.cordoned), ("draining", n.draining)) if on]
        breaker = short(admin_pb2.BreakerState, n.breaker.state, "BREAKER_STATE_")
        rows.append(
            [
                n.node_id,
                short(admin_pb2.NodeState, n.state, "NODE_STATE_"),
                f"{gib(total - free)}/{gib(total)}" if total else "no GPU",
                ",".join(m.name for m in snap.loaded) or "-",
                len(snap.installed),
                n.in_flight_total,
                breaker,
                ",".join(flags) or "-",
                n.ollama_url,
            ]
        )
    headers = ["NODE", "STATE", "VRAM", "LOADED", "MODELS", "IN-FLIGHT", "BREAKER", "FLAGS", "URL"]
    return table(headers, rows)


def node_detail(n: admin_pb2.Node) -> str:
    snap = n.snapshot
    lines = [
        f"node:      {n.node_id}  ({short(admin_pb2.NodeState, n.state, 'NODE_STATE_')})",
        f"ollama:    {n.ollama_url}  version {snap.ollama_version or '?'}",
        f"host:      {n.hostname}  weight {n.weight:g}",
        f"labels:    {', '.join(f'{k}={v}' for k, v in sorted(n.labels.items())) or '-'}",
        f"breaker:   {short(admin_pb2.BreakerState, n.breaker.state, 'BREAKER_STATE_')}"
        + (f"  last failure: {n.breaker.last_failure}" if n.breaker.last_failure else ""),
        f"cordoned:  {'yes' if n.cordoned else 'no'}   draining: {'yes' if n.draining else 'no'}"
        f"   in flight: {n.in_flight_total}",
    ]
    if n.default_context_length:
        source = {
            "learned": "learned from a reply",
            "declared": "the agent's --context-length",
            "vram": "Ollama's tier for this VRAM",
            "version": "Ollama's default for its version",
        }
        lines.append(
            f"context:   {n.default_context_length} for a request naming no num_ctx "
            f"({source.get(n.default_context_source, n.default_context_source)})"
        )
    if snap.ollama_error:
        lines.append(f"error:     {snap.ollama_error}")
    for g in snap.gpus:
        lines.append(
            f"gpu {g.index}:     {g.name}  {gib(g.total_bytes - g.free_bytes)} used of "
            f"{gib(g.total_bytes)}"
        )
    for c in n.conflicts:
        lines.append(f"conflict:  {c.hostname} ({c.ollama_url}) claimed this id")
    loaded = []
    for m in snap.loaded:
        key = names.model_key(m.name)
        loaded.append(
            [
                m.name,
                gib(m.size_vram_bytes),
                _when(m.expires_at.seconds) if m.HasField("expires_at") else "-",
                str(m.context_length or "-"),
                str(n.automatic_context_length.get(key) or "?"),
                n.runner_options.get(key) or "-",
            ]
        )
    headers = ["MODEL", "VRAM", "EXPIRES", "CONTEXT", "AUTOMATIC", "OPTIONS"]
    lines += ["", "loaded:", table(headers, loaded)]
    if n.learned:  # what routing learned from the replies here
        learned = [
            [
                s.model,
                f"{s.decode_tokens_per_second:.1f}" if s.decode_tokens_per_second else "-",
                f"{s.prompt_tokens_per_second:.0f}" if s.prompt_tokens_per_second else "-",
                f"{s.load_seconds:.2f}" if s.load_seconds else "-",
                str(s.samples),
            ]
            for s in n.learned
        ]
        headers = ["MODEL", "DECODE TOK/S", "PROMPT TOK/S", "LOAD S", "SAMPLES"]
        lines += ["", "learned:", table(headers, learned)]
    installed = [
        [m.name, gib(m.size_bytes), m.details.parameter_size, m.details.quantization_level]
        for m in snap.installed
    ]
    lines += ["", "installed:", table(["MODEL", "SIZE", "PARAMS", "QUANT"], installed)]
    return "\n".join(lines)


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch).strftime("%H:%M:%S") if epoch > 0 else "never"


def model_rows(models: Sequence[admin_pb2.FleetModel]) -> str:
    """One row a model; REPLY and PROMPT are what routing learned from its replies (its usual
    reply, and what Ollama's count of a prompt adds to the edge's estimate and its tokens per
    estimated one), "-" until learned."""
    rows = [
        [
            m.name,
            gib(m.size_bytes),
            ",".join(m.installed_on) or "-",
            ",".join(m.loaded_on) or "-",
            m.in_flight,
            f"{m.reply_tokens:.0f}" if m.reply_tokens else "-",
            _prompt_scale(m),
        ]
        for m in models
    ]
    headers = ["MODEL", "SIZE", "INSTALLED ON", "LOADED ON", "IN-FLIGHT", "REPLY", "PROMPT"]
    return table(headers, rows)


def _prompt_scale(m: admin_pb2.FleetModel) -> str:
    """e.g. "+1302 x1.30": tokens added to a prompt's estimate, and tokens per estimated one."""
    parts = []
    if m.prompt_added_tokens:
        parts.append(f"+{m.prompt_added_tokens:.0f}")
    if m.prompt_token_ratio:
        parts.append(f"x{m.prompt_token_ratio:.2f}")
    return " ".join(parts) or "-"


class Ctl:
    def __init__(self, args: argparse.Namespace) -> None:
        credentials = client_credentials(args.tls_ca, args.tls_cert, args.tls_key, "hopsctl")
        self.channel = (
            grpc.secure_channel(args.controlplane, credentials)
            if credentials
            else grpc.insecure_channel(args.controlplane)
        )
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
        self.as_json = args.json
        self.timeout = args.timeout

    def call(self, method: Callable[..., Any], request: Message, **kw: Any) -> Any:
        return method(request, metadata=self.metadata, timeout=kw.get("timeout", self.timeout))

    def show(self, message: Message, render: Callable[[], str]) -> None:
        print(MessageToJson(message, indent=2) if self.as_json else render())


def run(args: argparse.Namespace) -> int:
    ctl = Ctl(args)
    s = ctl.stub
    cmd = args.command
    if cmd == "nodes":
        r = ctl.call(s.ListNodes, admin_pb2.ListNodesRequest())
        ctl.show(r, lambda: node_rows(r.nodes))
    elif cmd == "node":
        r = ctl.call(s.GetNode, admin_pb2.GetNodeRequest(node_id=args.node))
        ctl.show(r, lambda: node_detail(r.node))
    elif cmd == "models":
        r = ctl.call(s.ListModels, admin_pb2.ListModelsRequest())
        ctl.show(r, lambda: model_rows(r.models))
    elif cmd in ("cordon", "uncordon"):
        if cmd == "cordon":
            r = ctl.call(s.CordonNode, admin_pb2.CordonNodeRequest(node_id=args.node))
        else:
            r = ctl.call(s.UncordonNode, admin_pb2.UncordonNodeRequest(node_id=args.node))
        ctl.show(r, lambda: f"{args.node} {cmd}ed")
    elif cmd == "drain":
        wait = duration_pb2.Duration()
        wait.FromNanoseconds(int(args.wait * 1e9))
        r = ctl.call(
            s.DrainNode,
            admin_pb2.DrainNodeRequest(node_id=args.node, wait=wait),
            timeout=args.wait + ctl.timeout,
        )
        ctl.show(
            r,
            lambda: (
                f"{args.node} drained"
                if r.drained
                else f"{args.node} draining: {r.in_flight} requests still in flight"
            ),
        )
        return 0 if r.drained or args.wait == 0 else 3
    elif cmd == "pull":
        return pull(ctl, args)
    elif cmd in ("unload", "preload"):
        if cmd == "unload":
            r = ctl.call(
                s.UnloadModel, admin_pb2.UnloadModelRequest(node_id=args.node, model=args.model)
            )
        else:
            preload = admin_pb2.PreloadModelRequest(
                node_id=args.node, model=args.model, keep_alive=args.keep_alive
            )
            r = ctl.call(s.PreloadModel, preload, timeout=max(ctl.timeout, 600))
        ctl.show(
            r, lambda: f"{args.model} {cmd}ed on {args.node}" if r.ok else f"failed: {r.error}"
        )
        return 0 if r.ok else 1
    elif cmd == "policy":
        if args.name:
            r = ctl.call(s.SetPolicy, admin_pb2.SetPolicyRequest(name=args.name))
            ctl.show(r, lambda: f"policy {r.previous} -> {r.name}")
        else:
            r = ctl.call(s.GetPolicy, admin_pb2.GetPolicyRequest())
            ctl.show(r, lambda: f"{r.name}  (available: {', '.join(r.available)})")
    return 0


def pull(ctl: Ctl, args: argparse.Namespace) -> int:
    request = admin_pb2.PullModelRequest(node_id=args.node, model=args.model)
    last = 0.0
    final: admin_pb2.PullModelResponse | None = None
    for frame in ctl.stub.PullModel(request, metadata=ctl.metadata, timeout=args.pull_timeout):
        final = frame
        if ctl.as_json:
            print(MessageToJson(frame, indent=None))
            continue
        now = time.monotonic()
        if frame.done or now - last >= 0.5:
            last = now
            progress = f" {100 * frame.completed / frame.total:5.1f}%" if frame.total else ""
            print(f"{frame.status}{progress}", flush=True)
    if final is None or final.error or not final.done:
        reason = final.error if final is not None else "no answer"
        print(f"hopsctl: pull failed: {reason}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="hopsctl",
        description="Admin client of a HOPS control plane (its AdminService over gRPC).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Each connection flag may also come from HOPS_CTL_<FLAG> (e.g. HOPS_CTL_TOKEN).",
    )
    p.add_argument(
        "--controlplane",
        default=env.get(ENV + "CONTROLPLANE", "127.0.0.1:50051"),
        help="control plane HOST:PORT (default %(default)s)",
    )
    p.add_argument("--token", default=env.get(ENV + "TOKEN", ""), help="the admin token")
    p.add_argument("--tls-ca", default=env.get(ENV + "TLS_CA", ""), help="PEM CA for TLS")
    p.add_argument("--tls-cert", default=env.get(ENV + "TLS_CERT", ""), help="client cert (mTLS)")
    p.add_argument("--tls-key", default=env.get(ENV + "TLS_KEY", ""), help="key of --tls-cert")
    p.add_argument("--timeout", type=parse_seconds, default=10.0, help="seconds per call")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("nodes", help="list nodes: state, VRAM, loaded models, in-flight, breaker")
    sub.add_parser("node", help="one node in detail").add_argument("node")
    sub.add_parser("models", help="models fleet-wide: where installed and loaded")
    sub.add_parser("cordon", help="stop routing new work to a node").add_argument("node")
    sub.add_parser("uncordon", help="route work to a node again").add_argument("node")
    drain = sub.add_parser("drain", help="cordon a node and wait for its in-flight work to end")
    drain.add_argument("node")
    drain.add_argument(
        "--wait", type=parse_seconds, default=60.0, help="seconds to wait (0: do not wait)"
    )
    pull_p = sub.add_parser("pull", help="pull a model on a node, with progress")
    pull_p.add_argument("node")
    pull_p.add_argument("model")
    pull_p.add_argument("--pull-timeout", type=parse_seconds, default=3600.0, help="seconds")
    for name, text in (
        ("unload", "unload a model from a node's memory"),
        ("preload", "load a model into a node's memory"),
    ):
        q = sub.add_parser(name, help=text)
        q.add_argument("node")
        q.add_argument("model")
        if name == "preload":
            q.add_argument("--keep-alive", default="", help="Ollama keep_alive, e.g. 30m or -1")
    policy = sub.add_parser("policy", help="show the routing policy, or set it")
    policy.add_argument("name", nargs="?", default="")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = run(args)
    except ValueError as exc:
        print(f"hopsctl: {exc}", file=sys.stderr)
        code = 2
    except grpc.RpcError as exc:
        # What grpc raises is also a grpc.Call, which carries the status and its text.
        call: Any = exc
        print(f"hopsctl: {call.code().name}: {call.details()}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
