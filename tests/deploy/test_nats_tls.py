"""The production overlay's NATS, run: nats-server started from the rendered nats.conf and
nats-users.conf (the ConfigMap nats-config), with a certificate made here as the Secret
nats-tls would hold it. A service connects over TLS with its user and the CA file the
overlay gives it (VOXLINE_NATS_TLS_CA_FILE); a client that does not speak TLS, one that
does not trust the CA, and one without a password are refused."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from pydantic import SecretStr

from proto import subjects
from proto.messages import Dtmf
from proto.permissions import SERVICES
from tests.deploy.k8s import render
from voxline.bus import Bus
from voxline.devstack import Process, free_port, nats_server_binary, wait_for_port
from voxline.nats_auth import password_env

pytestmark = pytest.mark.integration

# Where the overlay mounts the server's certificate (checked in test_k8s.py).
SERVER_TLS_DIR = "/etc/nats/tls"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca_and_cert(directory: Path, name: str) -> None:
    """ca.crt, and tls.crt/tls.key signed by it for 127.0.0.1 (server and client use, as
    the routes need), like the Secret nats-tls."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name} CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)  # fmt: skip
    (directory / "ext.cnf").write_text(
        "subjectAltName=DNS:nats,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=nats", "-keyout", "tls.key", "-out", "tls.csr",
            cwd=directory)  # fmt: skip
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
            "-extfile", "ext.cnf", "-out", "tls.crt", cwd=directory)  # fmt: skip


@dataclass
class SecuredNats:
    url: str
    ca_file: str
    other_ca_file: str
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def production_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredNats]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    objects = render("production")
    config = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("nats-config"))
    root = tmp_path_factory.mktemp("production-nats")
    tls, other, store = root / "tls", root / "other-ca", root / "data"
    for d in (tls, other, store):
        d.mkdir()
    make_ca_and_cert(tls, "voxline")
    make_ca_and_cert(other, "someone else")
    for key, text in config["data"].items():
        text = text.replace(f"{SERVER_TLS_DIR}/", f"{tls}/").replace("/data/jetstream", str(store))
        (root / key).write_text(text)
    passwords = {service: f"n{os.urandom(16).hex()}" for service in SERVICES}
    env = {"POD_NAME": "nats-0", **{password_env(s): p for s, p in passwords.items()}}
    port, cluster = free_port(), free_port()
    args = [nats_server_binary(), "-c", str(root / "nats.conf"), "-a", "127.0.0.1", "-p", str(port)]
    args += ["--cluster", f"nats://127.0.0.1:{cluster}", "-m", str(free_port())]
    with open(root / "nats.log", "ab") as log:
        server = Process("nats", args, env, log)
        server.start()
        try:
            wait_for_port(server, port, log_path=root / "nats.log")
            yield SecuredNats(f"tls://127.0.0.1:{port}", str(tls / "ca.crt"), str(other / "ca.crt"), passwords)
        finally:
            server.kill()


async def test_a_service_connects_over_tls_with_its_user(production_nats: SecuredNats) -> None:
    bus = Bus("gateway-under-test")
    await bus.connect(
        production_nats.url,
        user="gateway",
        password=SecretStr(production_nats.passwords["gateway"]),
        tls_ca_file=production_nats.ca_file,
    )
    try:
        await bus.publish(subjects.gateway_events("CAtls"), Dtmf(call_id="CAtls", digit="1", at_us=0))
        await bus.nc.flush()
        assert bus.connected and bus.permission_violations == 0
    finally:
        await bus.close()


async def test_no_tls_or_an_untrusted_ca_or_no_password_is_refused(production_nats: SecuredNats) -> None:
    plain = production_nats.url.replace("tls://", "nats://")
    gateway = {"user": "gateway", "password": production_nats.passwords["gateway"]}
    once = {"allow_reconnect": False, "max_reconnect_attempts": 0, "connect_timeout": 2}

    attempts = {
        "system CAs (the server's CA is not among them)": lambda: nats.connect(plain, **gateway, **once),
        "another CA": lambda: nats.connect(
            production_nats.url, tls=ssl.create_default_context(cafile=production_nats.other_ca_file), **gateway, **once
        ),
        "no password": lambda: nats.connect(
            production_nats.url, tls=ssl.create_default_context(cafile=production_nats.ca_file), **once
        ),
    }
    for what, attempt in attempts.items():
        with pytest.raises((nats.errors.Error, OSError, ssl.SSLError, asyncio.TimeoutError)):
            nc = await attempt()
            await nc.close()
            pytest.fail(f"connected with {what}")
