"""The configuration reference is generated from the settings objects and must be current."""

from __future__ import annotations

from pathlib import Path

import yaml

from controlplane.static_hosts import EXAMPLE, parse_hosts
from hopscommon.configdoc import reference

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == reference(), "docs/configuration.md is stale: run make docs"


def test_every_setting_appears_in_the_reference() -> None:
    text = reference()
    for needle in ("`--static-hosts`", "`HOPS_EDGE_FAIL_OPEN_FOR`", "`HOPS_AGENT_METRICS_LISTEN`"):
        assert needle in text


def test_the_documented_hosts_file_example_loads() -> None:
    hosts = parse_hosts(yaml.safe_load(EXAMPLE))
    assert [h.node_id for h in hosts] == ["10.0.0.7-11434", "gpu-box"]
    assert hosts[1].headers == (("Authorization", "Bearer s3cr3t"),)
