"""docker-compose.yml against the Compose Specification's JSON schema (no Docker engine is
needed), compose's own `${VAR:?message}` interpolation refusing a missing secret, and the
Dockerfile's shape. The schema is vendored: tests/deploy/compose-spec.json is
https://github.com/compose-spec/compose-spec/blob/170098ba07d9f53c383a41bfd4c5166b0a4529a6/schema/compose-spec.json
(Apache-2.0), the file `docker compose config` itself validates against."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.k8s import ROOT

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
SERVICES = ("gateway", "orchestrator", "stt", "brain", "tts")
NATS_PASSWORDS = tuple(f"VOXLINE_NATS_PASSWORD_{name.upper()}" for name in SERVICES)
SECRETS = (
    "VOXLINE_STREAM_TOKEN_SECRET",
    "TWILIO_AUTH_TOKEN",
    "VOXLINE_API_KEY",
    "GRAFANA_ADMIN_PASSWORD",
    *NATS_PASSWORDS,
)
# Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """What `docker compose` does to the file before using it (the rules of
    https://docs.docker.com/reference/compose-file/interpolation/)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        unset_or_empty = not env.get(name) if op.startswith(":") else name not in env
        if op.endswith("?") and unset_or_empty:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        if op.endswith("-") and unset_or_empty:
            return arg
        return env.get(name, "")

    return VARIABLE.sub(one, value)


def load() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def test_the_compose_file_validates_against_the_compose_spec() -> None:
    jsonschema.validate(load(), SCHEMA, cls=jsonschema.Draft7Validator)
    interpolated = interpolate(load(), {name: "x" * 32 for name in SECRETS})
    jsonschema.validate(interpolated, SCHEMA, cls=jsonschema.Draft7Validator)


def test_the_schema_refuses_a_misspelt_key() -> None:
    broken = copy.deepcopy(load())
    broken["services"]["stt"]["deploy"] = {"replica": 2}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize("missing", SECRETS)
def test_a_missing_secret_stops_compose_naming_it(missing: str) -> None:
    env = {name: "x" * 32 for name in SECRETS if name != missing}
    with pytest.raises(MissingVariable, match=missing):
        interpolate(load(), env)
    # And empty is missing too (.env.example ships them empty).
    with pytest.raises(MissingVariable, match=missing):
        interpolate(load(), {**env, missing: ""})


def test_no_secret_has_a_default() -> None:
    text = COMPOSE.read_text()
    for match in VARIABLE.finditer(text):
        if re.search(r"SECRET|TOKEN|KEY|PASSWORD", match["name"]) and match["op"] in (":-", "-"):
            assert match["arg"] == "", f"{match['name']} has a default value"


def test_every_published_port_is_bound_to_localhost() -> None:
    services = load()["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published
    assert "9100" not in " ".join(map(str, published)), "the internal port stays inside"


def test_services_probe_their_internal_port_and_scale() -> None:
    services = load()["services"]
    for name in ("gateway", "orchestrator", "stt", "brain", "tts"):
        service = services[name]
        assert service["command"] == ["python", "-m", f"services.{name}"]
        assert service["environment"]["VOXLINE_HEALTH_PORT"] == "9100"
        assert "127.0.0.1:9100/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["read_only"] is True and service["user"] == "10001:10001"
    for name in SERVICES:
        assert services[name]["deploy"]["replicas"] >= 2, name
    assert "ports" not in services["gateway"], "Twilio reaches the gateway replicas through edge"
    nats = services["nats"]
    assert "-js" in nats["command"] and "nats-data:/data" in nats["volumes"]


def test_nats_has_a_user_per_service_each_with_its_own_password() -> None:
    """nats-server reads the generated users (proto/permissions.py) and each password from
    its environment; each service connects as its own user with that password, nothing else."""
    services = interpolate(load(), {name: f"value-of-{name}" for name in SECRETS})
    nats = services["services"]["nats"]
    assert nats["command"][:2] == ["-c", "/etc/nats/nats.conf"]
    mounts = dict(m.rsplit(":", 1)[0].split(":", 1) for m in nats["volumes"] if m.startswith("./"))
    assert mounts == {
        "./deploy/compose/nats.conf": "/etc/nats/nats.conf",
        "./deploy/k8s/base/nats-users.conf": "/etc/nats/nats-users.conf",
    }
    assert "include ./nats-users.conf" in (ROOT / "deploy/compose/nats.conf").read_text()
    users = (ROOT / "deploy/k8s/base/nats-users.conf").read_text()
    for name, variable in zip(SERVICES, NATS_PASSWORDS, strict=True):
        env = services["services"][name]["environment"]
        assert env["VOXLINE_NATS_USER"] == name
        assert env["VOXLINE_NATS_PASSWORD"] == f"value-of-{variable}", name
        assert nats["environment"][variable] == f"value-of-{variable}"
        assert f'user: "{name}"\n      password: ${variable}\n' in users
    assert '"probe"' not in users  # the dev stack's test user is not deployed


def haproxy_check(config: str) -> subprocess.CompletedProcess[str]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        pytest.skip("haproxy (Debian package haproxy, installed by make system-deps) is not installed")
    return subprocess.run([haproxy, "-c", "-f", "/dev/stdin"], input=config, capture_output=True, text=True, timeout=60)


def test_edge_spreads_twilio_over_every_gateway_replica() -> None:
    """One address for Twilio in front of the gateway replicas, so a call whose gateway died
    can resume on another through its <Connect action> request; checked by HAProxy itself."""
    services = load()["services"]
    edge = services["edge"]
    assert edge["ports"] == ["127.0.0.1:8080:8080"]
    assert "./deploy/compose/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in edge["volumes"]
    config = (ROOT / "deploy/compose/haproxy.cfg").read_text()
    assert re.search(r"^\s+server-template gateway \d+ gateway:8080 check .*resolvers docker", config, re.M)
    assert "option httpchk GET /readyz" in config  # a draining gateway gets no new call
    # Twilio's webhooks are sent again to another gateway when one dies or drains (503) before
    # answering; the API (default backend) is not: a repeated POST /v1/calls dials twice.
    hooks = config.split("\nbackend twilio_hooks", 1)[1].split("\nbackend ", 1)[0]
    assert "retry-on conn-failure empty-response response-timeout 503" in hooks and "option redispatch" in hooks
    api = config.split("\nbackend gateways", 1)[1]
    assert "retry-on" not in api
    assert re.search(r"use_backend twilio_hooks if \{ path_beg /twilio/ \}", config)
    checked = haproxy_check(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = haproxy_check(config.replace("balance roundrobin", "balance round-robin"))
    assert broken.returncode != 0, "haproxy -c must refuse a wrong config, or this test proves nothing"


def test_prometheus_and_grafana_read_the_repository_config() -> None:
    services = load()["services"]
    mounts = {
        m.split(":")[0]: m.split(":")[1] for m in services["prometheus"]["volumes"] + services["grafana"]["volumes"]
    }
    assert mounts["./deploy/prometheus"] == "/etc/prometheus"
    assert (ROOT / "deploy/prometheus/prometheus.yml").exists()
    provisioning = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/voxline.yaml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    assert list((ROOT / "deploy/grafana/dashboards").glob("*.json"))
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    checked = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=ROOT / "deploy/prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_image_is_multi_stage_non_root_with_models_baked_in() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    run_lines = " ".join(re.findall(r"^RUN .*(?:\n(?:\s+.*))*", dockerfile, re.M))
    assert "voxline.smart_turn_fetch" in run_lines and "voxline.llama_server --print-command" in run_lines
    assert dockerfile.index("smart_turn_fetch") < dockerfile.rindex("USER ")  # made before dropping root
