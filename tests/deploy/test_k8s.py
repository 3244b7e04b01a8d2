"""The Kubernetes manifests: both overlays render, every object validates against the
Kubernetes schemas (strict: an unknown or misplaced field fails), and the rules the brief
sets hold (non-root, read-only root, no service-account token, probes on the internal
port, no secret value in the base, only the gateway reachable from outside)."""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.k8s import K8S, OVERLAYS, ROOT, SERVICES, by_kind, container, render

KUBERNETES_VERSION = "1.32"  # the kubectl on the project's machine; the oldest we target


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_every_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "Service", "Ingress", "NetworkPolicy", "ConfigMap"} <= kinds, overlay


def test_strict_validation_refuses_a_misplaced_field() -> None:
    """The check above can fail: a field Kubernetes does not know is an error, not ignored."""
    deployment = copy.deepcopy(by_kind(render("dev"), "Deployment")["gateway"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_each_service_runs_locked_down_with_probes_on_its_internal_port(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert main["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert main["command"] == ["python", "-m", f"services.{name}"]
        assert {"requests", "limits"} <= set(main["resources"]), name
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "internal"}, name
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "internal"}, name
        assert ports["internal"] == 9100, name
        assert {m["mountPath"] for m in main["volumeMounts"]} >= {"/tmp"}, name


def test_no_secret_value_outside_the_dev_overlay(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    secrets = [o for o in objects if o["kind"] == "Secret"]
    if overlay == "production":
        assert secrets == [], "production takes its Secret from `kubectl create secret`"
        return
    (secret,) = secrets
    for key, value in secret["data"].items():
        assert base64.b64decode(value).decode().startswith("dev-only-"), key
    for path in (K8S / "base").rglob("*"):
        if path.is_file():
            assert "kind: Secret" not in path.read_text() and "secretGenerator" not in path.read_text(), path


def test_only_the_gateway_is_reachable_from_outside(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    services = by_kind(objects, "Service")
    assert [p["port"] for p in services["gateway"]["spec"]["ports"]] == [80]  # not 9100: no /metrics, /status
    ingress = by_kind(objects, "Ingress")["gateway"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-send-timeout"] == "3600"
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": "gateway", "port": {"name": "http"}}]
    # Twilio's webhooks (a resumed call's <Connect action>) go on to another gateway when one
    # dies or drains; the API's POSTs never do (a repeated POST /v1/calls dials twice).
    twilio = by_kind(objects, "Ingress")["gateway-twilio"]
    paths = [p["path"] for r in twilio["spec"]["rules"] for p in r["http"]["paths"]]
    assert paths == ["/twilio"]
    assert "non_idempotent" in twilio["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-next-upstream"]
    assert "nginx.ingress.kubernetes.io/proxy-next-upstream" not in ingress["metadata"]["annotations"]
    assert twilio["spec"].get("tls") == ingress["spec"].get("tls")
    assert twilio["spec"]["rules"][0]["host"] == ingress["spec"]["rules"][0]["host"]
    policies = by_kind(objects, "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    open_to_all = [p for p in policies.values() for rule in p["spec"].get("ingress", []) if "from" not in rule]
    assert [p["metadata"]["name"] for p in open_to_all] == ["gateway-public"]
    nats = policies["nats-from-voxline"]["spec"]["ingress"][0]["from"]
    assert nats == [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "voxline"}}}]


def test_production_scales_each_stage_on_what_saturates_it() -> None:
    objects = render("production")
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == set(SERVICES)
    assert by_kind(objects, "StatefulSet")["nats"]["spec"]["replicas"] == 3
    assert set(by_kind(objects, "PodDisruptionBudget")) == {*SERVICES, "nats"}
    nats_conf = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config"))
    assert "nats://nats-2.nats-headless:6222" in nats_conf["data"]["nats.conf"]
    adapter = by_kind(objects, "ConfigMap")["prometheus-adapter-voxline"]["data"]["config.yaml"]
    sources = "".join(p.read_text() for p in (ROOT / "services").rglob("*.py"))
    for name in ("brain", "tts"):
        assert hpas[name]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for name in ("gateway", "stt", "orchestrator"):
        metric = hpas[name]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert f'Gauge("{metric}"' in sources, f"{metric} is not a gauge the services export"
        assert metric.removeprefix("voxline_") in adapter, f"prometheus-adapter does not serve {metric}"


def test_the_agents_configmap_is_the_bundled_agents() -> None:
    bundled = {p.name: p.read_text() for p in (ROOT / "voxline" / "agents").glob("*.toml")}
    shipped = {p.name: p.read_text() for p in (K8S / "base" / "agents").glob("*.toml")}
    assert shipped == bundled, "copy voxline/agents/*.toml to deploy/k8s/base/agents/"
    configmap = next(o for o in render("dev") if re.match(r"voxline-agents-", o["metadata"]["name"]))
    assert configmap["data"] == bundled


def test_each_service_is_its_own_nats_user_and_nats_has_every_password(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, objects = rendered
    for name, deployment in by_kind(objects, "Deployment").items():
        env = {e["name"]: e for e in container(deployment).get("env", [])}
        assert env["VOXLINE_NATS_USER"]["value"] == name
        ref = env["VOXLINE_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("voxline-secrets"), name  # the dev overlay's has a hash suffix
        assert ref["key"] == f"VOXLINE_NATS_PASSWORD_{name.upper()}", name
    nats = container(by_kind(objects, "StatefulSet")["nats"])
    passwords = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in nats["env"] if "NATS" in e["name"]}
    assert passwords == {f"VOXLINE_NATS_PASSWORD_{n.upper()}": f"VOXLINE_NATS_PASSWORD_{n.upper()}" for n in SERVICES}
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config"))
    assert config["data"]["nats-users.conf"] == (K8S / "base" / "nats-users.conf").read_text(), overlay
    assert config["data"]["nats.conf"].rstrip().endswith("include ./nats-users.conf"), overlay


def test_production_nats_speaks_tls_to_clients_and_routes() -> None:
    objects = render("production")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config"))
    conf = config["data"]["nats.conf"]
    top, cluster = conf.split("cluster {", 1)
    assert "tls {\n  cert_file: /etc/nats/tls/tls.crt" in top
    assert "tls {" in cluster and "verify: true" in cluster and "ca_file: /etc/nats/tls/ca.crt" in cluster
    nats = by_kind(objects, "StatefulSet")["nats"]
    volumes = {v["name"]: v for v in nats["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container(nats)["volumeMounts"]}
    assert volumes["tls"]["secret"] == {"secretName": "nats-tls"} and mounts["tls"] == "/etc/nats/tls"
    settings = by_kind(objects, "ConfigMap")
    voxline_config = next(v for k, v in settings.items() if k.startswith("voxline-config"))["data"]
    assert voxline_config["VOXLINE_NATS_URL"] == "tls://nats:4222"
    for name, deployment in by_kind(objects, "Deployment").items():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        # The CA only: a service never holds the server's key.
        assert volumes["nats-ca"]["secret"] == {
            "secretName": "nats-tls",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        mount = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}["nats-ca"]
        assert voxline_config["VOXLINE_NATS_TLS_CA_FILE"] == f"{mount}/ca.crt", name
