"""The deployment files under deploy/ cannot be run here (no Docker engine, no cluster), so this
checks what can be checked: every file parses, every HOPS_* variable they name exists in the
settings and every value they set is accepted by the binary that reads it, and every port, host
name and path lines up with what the other side expects."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from controlplane.settings import ENV_PREFIX as CP
from controlplane.settings import ControlPlaneSettings
from controlplane.settings import load_settings as load_cp
from edge.settings import ENV_PREFIX as EDGE
from edge.settings import EdgeSettings
from edge.settings import load_settings as load_edge
from hopscommon.settings import env_name
from nodeagent.settings import ENV_PREFIX as AGENT
from nodeagent.settings import AgentSettings
from nodeagent.settings import load_settings as load_agent
from ollamasim.settings import ENV_PREFIX as SIM
from ollamasim.settings import SimSettings
from ollamasim.settings import load_settings as load_sim

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
LOADERS = {
    "hops-controlplane": load_cp,
    "hops-edge": load_edge,
    "hops-nodeagent": load_agent,
    "hops-ollamasim": load_sim,
}
DOWNWARD = {"NODE_NAME": "gpu-node-1", "NODE_IP": "10.0.0.5"}  # what Kubernetes fills in
HOPSCTL_ENV = {f"HOPS_CTL_{n}" for n in ("CONTROLPLANE", "TOKEN", "TLS_CA", "TLS_CERT", "TLS_KEY")}


def known_env() -> set[str]:
    names = set(HOPSCTL_ENV)
    for cls, prefix in (
        (ControlPlaneSettings, CP),
        (EdgeSettings, EDGE),
        (AgentSettings, AGENT),
        (SimSettings, SIM),
    ):
        names |= {env_name(prefix, f) for f in dataclasses.fields(cls)}
    return names


def accepted(binary: str, env: dict[str, str]) -> None:
    """The binary's own settings loader takes ``env`` without complaint (no flags given)."""
    with mock.patch.dict(os.environ, env, clear=True):
        try:
            LOADERS[binary]([])
        except SystemExit as exc:  # argparse's usage error
            pytest.fail(f"{binary} refuses {env}: exit {exc.code}")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return data


def k8s_documents() -> Iterator[dict[str, Any]]:
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        yield from (d for d in yaml.safe_load_all(path.read_text()) if d)


def containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in k8s_documents():
        if doc["kind"] in ("Deployment", "DaemonSet"):
            for c in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, c


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def console_scripts() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(project["project"]["scripts"])


def test_every_hops_variable_named_anywhere_in_deploy_exists() -> None:
    known = known_env()
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        for name in re.findall(r"HOPS_[A-Z0-9_]+", path.read_text()):
            assert name in known, f"{path.relative_to(ROOT)} names {name}, which no setting reads"


def test_compose_services_are_accepted_and_wired() -> None:
    services = compose()["services"]
    scripts = console_scripts()
    listen: dict[str, int] = {}
    for name, svc in services.items():
        if svc.get("image", "").startswith("nginx"):
            continue
        binary = svc["command"][0]
        assert binary in scripts, f"{name} runs {binary}, not one of our console scripts"
        env = svc.get("environment", {})
        accepted(binary, env)
        for key, value in env.items():
            if key.endswith("_LISTEN") and not key.endswith(("METRICS_LISTEN", "ROUTE_LISTEN")):
                listen[name] = port_of(value)
    for name, svc in services.items():
        env = svc.get("environment", {})
        for key in ("HOPS_EDGE_CONTROLPLANE", "HOPS_AGENT_CONTROLPLANE"):
            if key in env:
                host, port = env[key].rsplit(":", 1)
                assert host in services and listen[host] == int(port), (name, key)
                assert host in svc["depends_on"]
        if "HOPS_AGENT_OLLAMA_URL" in env:
            host, port = env["HOPS_AGENT_OLLAMA_URL"].removeprefix("http://").split(":")
            assert listen[host] == int(port), name
    upstreams = re.findall(r"server (\S+):(\d+)", (DEPLOY / "nginx" / "hops.conf").read_text())
    edges = {n for n, s in services.items() if s.get("command") == ["hops-edge"]}
    assert {h for h, _ in upstreams} == edges
    assert all(listen[h] == int(p) for h, p in upstreams)
    mounted = services["nginx"]["volumes"][0].split(":")[0]
    assert (DEPLOY / "compose" / mounted).resolve() == DEPLOY / "nginx" / "hops.conf"
    build = services["controlplane"]["build"]
    assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).resolve().is_file()


def test_kubernetes_manifests_are_accepted_and_wired() -> None:
    docs = list(k8s_documents())
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    scripts = console_scripts()
    seen = 0
    for workload, c in containers():
        seen += 1
        binary = c["command"][0]
        assert binary in scripts
        env = {
            e["name"]: re.sub(r"\$\((\w+)\)", lambda m: DOWNWARD[m.group(1)], e["value"])
            for e in c["env"]
            if "value" in e
        }
        accepted(binary, {k: v for k, v in env.items() if k.startswith("HOPS_")})
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for key, value in env.items():
            if key.endswith("LISTEN"):
                assert port_of(value) in ports.values(), (workload["metadata"]["name"], key)
            if key.endswith("_CONTROLPLANE"):
                host, port = value.rsplit(":", 1)
                svc_name, namespace = host.split(".")[:2]
                svc = services[svc_name]
                assert svc["metadata"]["namespace"] == namespace
                assert int(port) in [p["port"] for p in svc["spec"]["ports"]]
        for probe in ("readinessProbe", "livenessProbe"):
            for kind in c.get(probe, {}).values():
                port = kind["port"]
                assert port in ports or port in ports.values(), (probe, port)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert seen == 3
    for svc in services.values():
        targets = [
            w
            for w, _ in containers()
            if svc["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, svc["metadata"]["name"]
        names = {
            p["name"]
            for c in targets[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names


def test_systemd_units_and_their_environment_files() -> None:
    scripts = console_scripts()
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert len(units) == 3
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit.read_text())
        binary = Path(parser["Service"]["ExecStart"].split()[0]).name
        assert binary in scripts
        example = DEPLOY / "systemd" / Path(parser["Service"]["EnvironmentFile"]).name
        env = dict(
            line.split("=", 1)
            for line in example.read_text().splitlines()
            if line and not line.startswith("#")
        )
        accepted(binary, env)


def test_dockerfile_copies_what_exists_and_runs_a_console_script() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    cmd = re.search(r'^CMD \["([^"]+)"', text, re.M)
    assert cmd and cmd.group(1) in console_scripts()
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}  # type: ignore[union-attr]
    defaults = {
        EdgeSettings().listen[1],
        ControlPlaneSettings().listen[1],
        ControlPlaneSettings().metrics_listen[1],  # type: ignore[index]
    }
    assert defaults <= exposed


def test_nginx_accepts_the_bodies_the_edge_accepts() -> None:
    conf = (DEPLOY / "nginx" / "hops.conf").read_text()
    size = re.search(r"client_max_body_size (\d+)m;", conf)
    assert size and int(size.group(1)) * 1024**2 == EdgeSettings().max_body
    assert "proxy_buffering off;" in conf  # token streams must not be held back
