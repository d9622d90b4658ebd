"""Mutual TLS between the control plane and its agents, edges and admins (throwaway certs)."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import httpx
import pytest

from tests import tlscerts
from tests.integration import fleet
from tests.integration.test_grpcurl import GRPCURL

pytestmark = pytest.mark.slow


def test_mutual_tls_end_to_end(tmp_path: Path) -> None:
    certs = tlscerts.make(tmp_path)
    client_tls = [
        "--tls-ca",
        certs.ca,
        "--tls-cert",
        certs.client_cert,
        "--tls-key",
        certs.client_key,
    ]
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(
            fleet.controlplane(
                [
                    "--tls-cert",
                    certs.server_cert,
                    "--tls-key",
                    certs.server_key,
                    "--tls-client-ca",
                    certs.ca,
                    "--admin-token",
                    "admin-t",
                ]
            )
        )
        host = stack.enter_context(fleet.sim())
        stack.enter_context(fleet.agent([plane.url], host.url, "tls-node", client_tls))
        no_cert = stack.enter_context(
            fleet.agent([plane.url], host.url, "no-cert", ["--tls-ca", certs.ca])
        )
        edge = stack.enter_context(fleet.edge([plane.url], client_tls))
        grpcurl = [
            GRPCURL,
            "-cacert",
            certs.ca,
            "-cert",
            certs.client_cert,
            "-key",
            certs.client_key,
            "-H",
            "authorization: Bearer admin-t",
            plane.url,
        ]

        def nodes() -> str:
            done = subprocess.run(
                [*grpcurl, "hops.v1.AdminService/ListNodes"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return done.stdout if done.returncode == 0 else ""

        fleet.wait_until(lambda: "tls-node" in nodes(), 5.0, "node joins over mTLS")
        assert "no-cert" not in nodes()  # a client without a certificate never gets in
        assert no_cert.popen.poll() is None
        plaintext = subprocess.run(
            [GRPCURL, "-plaintext", plane.url, "list"], capture_output=True, text=True, timeout=30
        )
        assert plaintext.returncode != 0
        fleet.wait_until(
            lambda: httpx.get(edge.url + "/api/tags").status_code == 200,
            5.0,
            "edge has the inventory over mTLS",
        )
        reply = httpx.post(
            edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "x", "stream": False},
            timeout=30,
        )
        assert reply.status_code == 200 and reply.headers["x-hops-node"] == "tls-node"
