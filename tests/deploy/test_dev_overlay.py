"""The dev overlay, run: every process started from what `kubectl kustomize
deploy/k8s/overlays/dev` renders (command, env with its Secret and ConfigMap references,
volumes, ports, probes; see tests/deploy/pods.py), NATS from its rendered nats.conf, and a
simulated Twilio call through the gateway's Service port. A wrong variable name, port,
reference or probe path in the manifests fails here, not in a cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.deploy.k8s import ROOT, SERVICES, by_kind, render
from tests.deploy.pods import Cluster, wait_http_ok
from tests.integration.conftest import script_for
from voxline.simulator import Utterance, run_call

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 120  # five Python services and NATS on two shared cores
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    objects = render("dev")
    logs = tmp_path_factory.mktemp("dev-overlay-logs")
    c = Cluster(objects, tmp_path_factory.mktemp("dev-overlay-pods"), ROOT)
    try:
        nats = c.start(c.get("StatefulSet", "nats"), logs)
        deadline = time.monotonic() + START_TIMEOUT_S
        wait_http_ok(nats, "readinessProbe", deadline)
        deployments = by_kind(objects, "Deployment")
        for name in SERVICES:
            c.start(deployments[name], logs)
        for name in SERVICES:
            for probe in PROBES:
                wait_http_ok(c.pods[name], probe, deadline)
        yield c
    except BaseException:
        for log in sorted(logs.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    finally:
        for pod in reversed(list(c.pods.values())):
            pod.process.stop()
            if pod.process.log:
                pod.process.log.close()


def test_every_service_passes_its_declared_probes(cluster: Cluster) -> None:
    for name in SERVICES:
        for probe in PROBES:
            assert httpx.get(cluster.pods[name].probe(probe), timeout=5).status_code == 200, (name, probe)


def test_metrics_are_on_the_internal_port_only(cluster: Cluster) -> None:
    gateway = cluster.pods["gateway"]
    public = f"http://127.0.0.1:{cluster.service_target('gateway', 80)}"
    internal = f"http://127.0.0.1:{gateway.local_port('internal')}"
    assert httpx.get(f"{public}/metrics", timeout=5).status_code == 404
    assert "voxline_gateway_active_streams" in httpx.get(f"{internal}/metrics", timeout=5).text


async def test_a_simulated_call_completes(cluster: Cluster) -> None:
    base = f"http://127.0.0.1:{cluster.service_target('gateway', 80)}"
    auth_token = cluster.pods["gateway"].env["TWILIO_AUTH_TOKEN"]  # from the rendered dev Secret
    result = await run_call(base, script_for(Utterance("what are your opening hours")), auth_token=auth_token)
    assert result.accepted and not result.errors, result.errors
    assert result.turns and result.turns[0].completed
