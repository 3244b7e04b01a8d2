"""NATS with the users and permissions of proto/permissions.py, on a real nats-server run
from the config the dev stack writes (`NatsUsers.write_config`): a client without
credentials cannot connect (so cannot listen to a call's audio), a service cannot publish
or subscribe outside its permissions (the message is not delivered, and its bus logs and
counts the refusal), a service cannot forge the reply to another's request, and every
subject, request and KV bucket the contract gives a service works for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg
from pydantic import SecretStr

from proto import AudioFrame, subjects
from proto.knowledge import KNOWLEDGE_BUCKET
from proto.messages import (
    AnalysisRequest,
    AnalysisResult,
    CallAccepted,
    CallEnded,
    CallStart,
    Dtmf,
    Hangup,
    Message,
    SpeechStarted,
    TurnCancel,
)
from proto.permissions import PERMISSIONS, PROBE_USER, SERVICES, Permissions
from proto.records import CALL_RECORDS_BUCKET, CallRecord
from tests.unit.bus_probe import Probe
from voxline.agents.documents import (
    KnowledgeDocuments,
    all_documents,
    delete_document,
    open_bucket,
    put_document,
    read_text,
)
from voxline.bus import Bus, CredentialsRefused
from voxline.devstack import Process, free_port, nats_server_binary, wait_for_port
from voxline.nats_auth import DEPLOY_HEADER, NatsUsers, authorization, redact_url

CALL = "CAattack0001"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def users() -> NatsUsers:
    return NatsUsers.generate()


@pytest.fixture(scope="module")
def secured_url(tmp_path_factory: pytest.TempPathFactory, users: NatsUsers) -> Iterator[str]:
    """A nats-server with JetStream started exactly as the dev stack starts its own."""
    store = tmp_path_factory.mktemp("nats-secured")
    conf = users.write_config(store / "auth" / "nats.conf")
    port = free_port()
    args = [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]
    with open(store / "nats.log", "ab") as log:
        server = Process("nats", args, {}, log)
        server.start()
        try:
            wait_for_port(server, port, log_path=store / "nats.log")
            yield f"nats://127.0.0.1:{port}"
        finally:
            server.kill()


async def as_service(url: str, users: NatsUsers, service: str) -> Bus:
    """A bus connected the way the dev stack's `service` process connects (its env)."""
    env = users.env_for(service)
    bus = Bus(f"{service}-under-test")
    await bus.connect(url, user=env["VOXLINE_NATS_USER"], password=SecretStr(env["VOXLINE_NATS_PASSWORD"]))
    return bus


@pytest.fixture
async def probe(secured_url: str, users: NatsUsers) -> AsyncIterator[Probe]:
    """The test user, subscribed to everything on `vx1.>`: sees what gets delivered."""
    p = await Probe.connect(users.probe_url(secured_url))
    yield p
    await p.close()


@pytest.fixture
async def stt(secured_url: str, users: NatsUsers) -> AsyncIterator[Bus]:
    bus = await as_service(secured_url, users, "stt")
    yield bus
    await bus.close()


async def until(condition: object, what: str, timeout: float = 5.0) -> None:
    """Poll a condition the bus exposes (the server's -ERR reaches the client on its own time)."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


# --- the attacks ------------------------------------------------------------------------


async def test_a_client_without_credentials_cannot_connect(secured_url: str) -> None:
    with pytest.raises(nats.errors.Error):
        await nats.connect(secured_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
    with pytest.raises(CredentialsRefused):  # the services' bus says so, and does not hang
        await asyncio.wait_for(Bus("anonymous").connect(secured_url), 10)


async def test_a_wrong_password_cannot_connect(secured_url: str) -> None:
    with pytest.raises(nats.errors.AuthorizationError):
        await asyncio.wait_for(Bus("guess").connect(secured_url, user="stt", password=SecretStr("guessed")), 10)
    with pytest.raises(nats.errors.AuthorizationError):  # a known user name is not enough
        await asyncio.wait_for(Bus("blank").connect(secured_url, user="gateway"), 10)


async def test_stt_cannot_hang_up_a_call_and_its_bus_says_so(
    probe: Probe, stt: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="voxline.bus"):
        await stt.publish(subjects.control(CALL), Hangup(call_id=CALL, reason="forged"))
        await stt.publish(subjects.turn_cancel(CALL), TurnCancel(call_id=CALL, turn_id=1, reason="forged", at_us=1))
        # Allowed, and after the forbidden ones on the same connection: once the probe has
        # it, anything delivered before it would be there too.
        await stt.publish(subjects.stt_events(CALL), SpeechStarted(call_id=CALL, at_us=1))
        await probe.wait_for(SpeechStarted)
        await until(lambda: stt.permission_violations >= 2, "the server's refusals")
    assert probe.of(Hangup) == [] and probe.of(TurnCancel) == []
    refusals = [r.getMessage() for r in caplog.records if "permissions violation" in r.getMessage()]
    assert any("publish to vx1.call.*.control" in m for m in refusals), refusals
    assert all(CALL.lower() not in m.lower() for m in refusals)  # the kind, never the call id


async def test_brain_cannot_listen_to_a_call(secured_url: str, users: NatsUsers, probe: Probe) -> None:
    brain = await as_service(secured_url, users, "brain")
    heard: list[AudioFrame] = []
    ended: list[Message] = []

    async def on_frame(frame: AudioFrame, _: Msg) -> None:
        heard.append(frame)

    async def on_ended(message: Message, _: Msg) -> None:
        ended.append(message)

    try:
        await brain.subscribe_frames(subjects.audio_in(CALL), on_frame)
        await brain.subscribe(subjects.CALL_ENDED, on_ended)
        await until(lambda: brain.permission_violations >= 1, "the refused subscription")
        await probe.publish_frame(subjects.audio_in(CALL), AudioFrame(payload=b"\xff" * 160, seq=1))
        # Sent after the audio by the same connection: once brain has it, the audio would
        # have come first.
        await probe.publish(subjects.CALL_ENDED, CallEnded(call_id=CALL, reason="test"))
        await until(lambda: bool(ended), "CallEnded, which brain may hear")
        assert heard == []
    finally:
        await brain.close()


async def test_a_service_cannot_forge_the_reply_to_another_services_request(
    secured_url: str, users: NatsUsers, stt: Bus
) -> None:
    """The gateway asks for an orchestrator (CALL_START); stt, which may not answer it,
    tries to: it can neither subscribe to the request nor publish to the gateway's inbox."""
    gateway = await as_service(secured_url, users, "gateway")
    orchestrator = await as_service(secured_url, users, "orchestrator")
    try:
        assert gateway.nc._inbox_prefix == bytearray(b"_INBOX.gateway")  # its own, the only one it reads

        async def sneak(_message: Message, msg: Msg) -> None:
            await stt.respond(msg, CallAccepted(call_id=CALL, orchestrator_id="forged"))

        await stt.subscribe(subjects.CALL_START, sneak)
        await stt.nc.publish("_INBOX.gateway.guessed.1", b"{}")
        await until(lambda: stt.permission_violations >= 2, "both refusals")

        async def accept(message: Message, msg: Msg) -> None:
            await orchestrator.respond(msg, CallAccepted(call_id=CALL, orchestrator_id="real"))

        await orchestrator.subscribe(subjects.CALL_START, accept, queue=subjects.QUEUE_ORCHESTRATOR)
        start = CallStart(call_id=CALL, agent_id="demo", stream_sid="MZ1", call_sid=CALL, started_at_us=1)
        deadline = time.monotonic() + 5
        while True:  # until the server has the orchestrator's subscription
            try:
                reply = await gateway.request(subjects.CALL_START, start, timeout=5)
                break
            except nats.errors.NoRespondersError:
                assert time.monotonic() < deadline, "the orchestrator never subscribed"
        assert isinstance(reply, CallAccepted) and reply.orchestrator_id == "real"
    finally:
        await gateway.close()
        await orchestrator.close()


async def test_stt_cannot_read_call_records(secured_url: str, users: NatsUsers, stt: Bus) -> None:
    orchestrator = await as_service(secured_url, users, "orchestrator")
    try:
        await orchestrator.create_bucket(CALL_RECORDS_BUCKET, ttl_s=60)
        record = CallRecord(call_id=CALL, call_sid=CALL, agent_id="demo", status="ended", started_at_us=1)
        await orchestrator.kv_put(CALL_RECORDS_BUCKET, CALL, record)
        assert (await orchestrator.kv_get(CALL_RECORDS_BUCKET, CALL, CallRecord)) is not None
        with pytest.raises(nats.errors.TimeoutError):  # the request is refused, so never answered
            await stt.nc.jetstream(timeout=1).key_value(CALL_RECORDS_BUCKET)
        assert stt.permission_violations >= 1
    finally:
        await orchestrator.close()


async def test_only_the_orchestrator_asks_a_brain_for_a_post_call_analysis(secured_url: str, users: NatsUsers) -> None:
    """An analysis request carries a whole transcript and costs a model call: a stolen
    gateway or STT password can ask for none; the orchestrator's request is answered."""
    brain = await as_service(secured_url, users, "brain")
    gateway = await as_service(secured_url, users, "gateway")
    orchestrator = await as_service(secured_url, users, "orchestrator")
    asked: list[str] = []

    async def answer(message: Message, msg: Msg) -> None:
        assert isinstance(message, AnalysisRequest)
        asked.append(message.call_id)
        await brain.respond(msg, AnalysisResult(call_id=message.call_id, status="done", provider="fake"))

    def request(call_id: str) -> AnalysisRequest:
        return AnalysisRequest(call_id=call_id, agent_id="demo", lines=[], timeout_ms=1000, requested_at_us=0)

    try:
        await brain.subscribe(subjects.BRAIN_ANALYSE, answer, queue=subjects.QUEUE_BRAIN)
        await brain.nc.flush()
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await gateway.request(subjects.BRAIN_ANALYSE, request("CAforged"), timeout=0.5)
        await until(lambda: gateway.permission_violations >= 1, "the server's refusal")
        reply = await orchestrator.request(subjects.BRAIN_ANALYSE, request("CAowned"), timeout=5)
        assert isinstance(reply, AnalysisResult) and reply.status == "done"
        assert asked == ["CAowned"]
    finally:
        for bus in (brain, gateway, orchestrator):
            await bus.close()


async def test_brain_cannot_write_or_delete_knowledge(secured_url: str, users: NatsUsers, probe: Probe) -> None:
    """The brain reads the uploaded documents; a stolen brain password must not plant one
    (what every agent would then tell its callers) nor remove one."""
    brain = await as_service(secured_url, users, "brain")
    try:
        await put_document(await open_bucket(probe.bus), "victim", "real.md", "Real.", "text/plain", "text/plain", 5, 1)
        store = await brain.nc.jetstream(timeout=1).object_store(KNOWLEDGE_BUCKET)
        with pytest.raises(nats.errors.Error):  # the chunk's publish is refused, so never acknowledged (a timeout)
            await store.put("victim/forged.md", b"Wire the deposit to account 1234.")
        with pytest.raises(nats.errors.Error):  # the delete marker's publish too (or the purge after it)
            await store.delete("victim/real.md")
        assert brain.permission_violations >= 2
        names = [i.name for i in await all_documents(probe.bus)]
        assert "victim/real.md" in names and "victim/forged.md" not in names
    finally:
        await brain.close()


# --- what the contract gives each service works -----------------------------------------


def concrete(pattern: str) -> str:
    return pattern.replace("*", CALL if pattern.startswith("vx1.call.") else "instance-1")


@pytest.mark.parametrize("service", SERVICES)
async def test_every_subject_the_contract_gives_a_service_works(
    secured_url: str, users: NatsUsers, probe: Probe, service: str
) -> None:
    bus = await as_service(secured_url, users, service)
    got: list[str] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg.subject)

    try:
        perms: Permissions = PERMISSIONS[service]
        for subject in perms.subscribe:
            await bus.nc.subscribe(concrete(subject), cb=on_msg)
        for subject in perms.subscribe:  # sent again until delivered: the subscription may still be on its way
            deadline = time.monotonic() + 5
            while concrete(subject) not in got:
                assert time.monotonic() < deadline, f"{service} never got {subject}"
                await probe.bus.nc.publish(concrete(subject), b"x")
                await probe.bus.nc.flush()
                await asyncio.sleep(0.05)
        for subject in perms.publish:
            await bus.publish(concrete(subject), Dtmf(call_id=CALL, digit="9", at_us=0), {"Sent-By": service})
        await bus.nc.flush()
        wanted = {concrete(p) for p in perms.publish}
        await probe.until(
            lambda: {s.subject for s in probe.seen if s.headers.get("Sent-By") == service} >= wanted, "publishes"
        )
        for bucket in perms.buckets:
            await bus.create_bucket(bucket, ttl_s=60)
            await bus.kv_put(bucket, "k1", Dtmf(call_id=CALL, digit="1", at_us=0))
            assert await bus.kv_get(bucket, "k1", Dtmf) is not None
            entry = await bus.kv_entry(bucket, "k1", Dtmf)
            assert entry is not None and await bus.kv_update(bucket, "k1", b"{}", last=entry[1]) > entry[1]
            await bus.kv_delete(bucket, "k1")
        for bucket in perms.watch:
            changes = bus.kv_watch(bucket)
            await bus.kv_put_bytes(bucket, "k2", b"{}")
            # The bucket may hold other tests' keys (the call records do): read up to ours.
            async with asyncio.timeout(5):
                while (await anext(changes)).key != "k2":
                    pass
            await changes.aclose()
        text = "# Hours\n\nOpen at nine."
        if perms.objects:  # written, listed, read back and deleted
            assert perms.objects == (KNOWLEDGE_BUCKET,)  # the one object store; documents.py is its client
            store = await open_bucket(bus)
            await put_document(store, "perms", f"{service}.md", text, "text/markdown", "text/markdown", 20, 1)
            [info] = [i for i in await all_documents(bus) if i.name == f"perms/{service}.md"]
            assert await read_text(bus.nc.jetstream(), info) == text
            assert await delete_document(store, "perms", f"{service}.md")
        if perms.objects_read:  # followed as the probe writes
            assert perms.objects_read == (KNOWLEDGE_BUCKET,)
            documents = KnowledgeDocuments(bus)
            await documents.start()
            store = await open_bucket(probe.bus)
            await put_document(store, "perms", f"{service}.md", text, "text/markdown", "text/markdown", 20, 1)
            await until(lambda: [d.name for d in documents.of("perms")] == [f"{service}.md"], "the document")
            [chunk] = documents.of("perms")[0].chunks
            assert chunk.text == "Hours\nOpen at nine."
            await documents.stop()
        assert bus.permission_violations == 0
    finally:
        await bus.close()


def test_every_subject_of_the_contract_has_a_publisher_and_a_subscriber() -> None:
    kinds = {k for k in subjects._KINDS}
    published = {p for perms in PERMISSIONS.values() for p in perms.publish}
    subscribed = {p for perms in PERMISSIONS.values() for p in perms.subscribe}
    assert kinds - published == set(), "a subject nobody may publish: add it to proto/permissions.py"
    assert kinds - subscribed == set(), "a subject nobody may subscribe to: add it to proto/permissions.py"
    assert (published | subscribed) - kinds == set(), "a permission outside proto/subjects.py"


def test_the_deploy_config_is_generated_from_the_table() -> None:
    shipped = (ROOT / "deploy" / "k8s" / "base" / "nats-users.conf").read_text()
    assert shipped == DEPLOY_HEADER + authorization(None), (
        "run: python -m voxline.nats_auth > deploy/k8s/base/nats-users.conf"
    )
    assert PROBE_USER not in shipped.split("# ", 1)[0] and f'"{PROBE_USER}"' not in shipped


def test_a_password_in_a_url_is_not_logged(users: NatsUsers) -> None:
    url = users.probe_url("nats://127.0.0.1:4222,nats://10.0.0.2:4222")
    assert users.passwords[PROBE_USER] not in redact_url(url)
    assert redact_url(url) == "nats://probe:***@127.0.0.1:4222,nats://probe:***@10.0.0.2:4222"
