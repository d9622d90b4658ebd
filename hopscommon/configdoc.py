"""docs/configuration.md, generated from the settings objects themselves (``make docs``; a test
fails when the committed file is stale)."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from controlplane import settings as cp
from controlplane import static_hosts
from edge import settings as edge
from hopscommon.settings import env_name, flag_name, parse_bool, shown_default
from nodeagent import settings as agent
from ollamasim import settings as sim

BINARIES: tuple[tuple[str, str, type[Any], str], ...] = (
    (
        "hops-controlplane",
        "Fleet state from agents, routing for edges, admin RPCs, dashboard and metrics.",
        cp.ControlPlaneSettings,
        cp.ENV_PREFIX,
    ),
    (
        "hops-edge",
        "The Ollama and OpenAI HTTP API over the fleet; run several behind a load balancer.",
        edge.EdgeSettings,
        edge.ENV_PREFIX,
    ),
    (
        "hops-nodeagent",
        "Beside each Ollama: reports its models, loaded set and GPU memory; runs commands.",
        agent.AgentSettings,
        agent.ENV_PREFIX,
    ),
    (
        "hops-ollamasim",
        "The simulated Ollama host used by the demo, the tests and the benchmarks.",
        sim.SimSettings,
        sim.ENV_PREFIX,
    ),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the settings objects by `make docs`; do not edit by hand (a test fails",
        "when this file is stale). Every setting is a flag and an environment variable; the flag",
        "wins. Durations are seconds or `500ms`/`2m`/`1h`; sizes are bytes or `8GiB`/`512MB`;",
        "booleans are `true`/`false` (flags: `--name` / `--no-name`); repeatable flags take a",
        "comma-separated list in their variable.",
        "",
        "`hopsctl` reads `--controlplane`, `--token`, `--tls-ca`, `--tls-cert`, `--tls-key` or",
        "`HOPS_CTL_CONTROLPLANE`, `HOPS_CTL_TOKEN`, `HOPS_CTL_TLS_CA`, `HOPS_CTL_TLS_CERT`,",
        "`HOPS_CTL_TLS_KEY` (`hopsctl --help`).",
    ]
    for binary, summary, cls, prefix in BINARIES:
        out += ["", f"## {binary}", "", summary, "", "| Flag | Variable | Default | Meaning |"]
        out.append("|---|---|---|---|")
        for field in dataclasses.fields(cls):
            meta = field.metadata
            flag = flag_name(field)
            if meta["parse"] is parse_bool:
                flag = f"{flag} / --no-{flag[2:]}"
            elif meta["repeated"]:
                flag += " (repeatable)"
            default = shown_default(field) or "(empty)"
            out.append(
                f"| `{flag}` | `{env_name(prefix, field)}` | `{_cell(default)}` "
                f"| {_cell(meta['help'])} |"
            )
    out += ["", "## Static hosts file (`--static-hosts`)", ""]
    out += [
        "Ollama hosts where no agent can be installed, polled by the control plane itself and",
        "routed like any other node. A plain list of URLs (the first HOPS's `hosts.yml`) loads",
        "unchanged; each entry may instead be a mapping:",
        "",
        "```yaml",
        static_hosts.EXAMPLE.rstrip(),
        "```",
        "",
        "`headers` go with every poll and every request routed to that host, replacing client",
        "headers of the same name. A host that stops answering is marked unhealthy (out of",
        "routing) until it answers again.",
    ]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
