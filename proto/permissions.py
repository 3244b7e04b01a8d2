"""Who may publish and subscribe what on the bus: one NATS user per service, allowed exactly
the subjects the contract (README.md) gives it. A stolen STT password can then read caller
audio and publish transcripts, but cannot hang up a call, speak into it or read its
records; a client without a password cannot connect at all.

Subjects come from `subjects.py` with `*` for the call or instance id: NATS permissions
limit the kind of subject a service uses, not which calls it holds (a call's subjects are
made at run time). JetStream KV is allowed per bucket (`kv_subjects`): the bucket's
`$KV.<bucket>.>` keys and the `$JS.API` requests nats-py's KV client makes on its stream.
Object stores likewise (`object_subjects`, stream `OBJ_<bucket>`): readers get its info,
message gets and ordered consumers bound to it by name; writers also publish to
`$O.<bucket>.>` and purge (an object's old chunks). No service may list the server's
streams (`$JS.API.STREAM.NAMES`): voxline/agents/documents.py binds reads to the stream.

Replies: every service subscribes to its own inbox prefix (`inbox_prefix`), not to every
`_INBOX`, so one service cannot read the replies another is waiting for (caller audio,
call records); and answers requests it received through `allow_responses`, which lets it
publish to a request's reply subject, once, and to no other inbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from proto import subjects
from proto.knowledge import KNOWLEDGE_BUCKET
from proto.ownership import CALL_LEASES_BUCKET, CALL_STATE_BUCKET
from proto.records import (
    AGENTS_BUCKET,
    API_KEYS_BUCKET,
    CALL_RECORDS_BUCKET,
    CALL_STREAMS_BUCKET,
    STREAM_ENDS_BUCKET,
    STREAM_TOKENS_BUCKET,
)
from proto.webhooks import WEBHOOK_DELIVERIES_BUCKET

ANY = "*"  # any call id or instance id in a subject
INBOX = "_INBOX"

SERVICES = ("gateway", "orchestrator", "stt", "brain", "tts")
# Tests and probes of a dev stack only (never in the deploy configs): may publish and
# subscribe anything, so a test can watch and drive the bus like `nats sub` / `nats pub`.
PROBE_USER = "probe"


@dataclass(frozen=True)
class Permissions:
    """One service's subjects on the bus (the contract's subjects, wildcards for ids) and the
    KV buckets it reads and writes; `watch`: buckets it follows as they change; `objects`:
    object stores it writes (and reads); `objects_read`: object stores it only reads and follows."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    buckets: tuple[str, ...] = ()
    watch: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    objects_read: tuple[str, ...] = ()


PERMISSIONS: dict[str, Permissions] = {
    "gateway": Permissions(
        publish=(
            subjects.CALL_START,  # request
            subjects.audio_in(ANY),
            subjects.gateway_events(ANY),
            subjects.stream_resume(ANY),  # request
            subjects.stream_superseded(ANY),
        ),
        subscribe=(
            subjects.audio_out(ANY),
            subjects.turn_cancel(ANY),
            subjects.control(ANY),
            subjects.caller_audio(ANY),  # answers the STT worker's request
            subjects.stream_superseded(ANY),
            subjects.gateway_ping(ANY),  # answers the orchestrator's liveness checks
            subjects.stt_events(ANY),  # GET /v1/calls/{id}/events: partial transcripts, while a client listens
        ),
        buckets=(
            CALL_RECORDS_BUCKET,
            STREAM_ENDS_BUCKET,
            STREAM_TOKENS_BUCKET,
            CALL_STREAMS_BUCKET,
            API_KEYS_BUCKET,
            AGENTS_BUCKET,  # written by /v1/agents, watched (voxline.agents.AgentStore)
            WEBHOOK_DELIVERIES_BUCKET,  # read by GET /v1/calls/{id}/webhooks
        ),
        # Listing the keys runs a (meta-only) watch; listing the calls reads the records by one.
        watch=(API_KEYS_BUCKET, CALL_RECORDS_BUCKET, AGENTS_BUCKET),
        objects=(KNOWLEDGE_BUCKET,),  # written by /v1/agents/{id}/knowledge
    ),
    "orchestrator": Permissions(
        publish=(
            subjects.STT_ASSIGN,  # request
            subjects.BRAIN_TURN,
            subjects.BRAIN_ANALYSE,  # request: the post-call analysis
            subjects.TTS_SYNTHESIZE,
            subjects.CALL_ENDED,
            subjects.stt_ping(ANY),  # request
            subjects.gateway_ping(ANY),  # request
            subjects.stt_release(ANY),
            subjects.stt_replay(ANY),
            subjects.turn_cancel(ANY),
            subjects.control(ANY),
        ),
        subscribe=(
            subjects.CALL_START,  # answers the gateway's request
            subjects.gateway_events(ANY),
            subjects.stt_events(ANY),
            subjects.reply_text(ANY),
            subjects.tts_events(ANY),
            subjects.stream_resume(ANY),  # answers the gateway's request
        ),
        buckets=(CALL_RECORDS_BUCKET, CALL_LEASES_BUCKET, CALL_STATE_BUCKET, AGENTS_BUCKET, WEBHOOK_DELIVERIES_BUCKET),
        watch=(CALL_LEASES_BUCKET, AGENTS_BUCKET),
    ),
    "stt": Permissions(
        publish=(
            subjects.stt_events(ANY),
            subjects.caller_audio(ANY),  # request
        ),
        subscribe=(
            subjects.STT_ASSIGN,
            subjects.CALL_ENDED,
            subjects.stt_ping(ANY),
            subjects.stt_release(ANY),
            subjects.stt_replay(ANY),
            subjects.audio_in(ANY),
        ),
    ),
    "brain": Permissions(
        publish=(subjects.reply_text(ANY),),
        subscribe=(subjects.BRAIN_TURN, subjects.BRAIN_ANALYSE, subjects.ALL_TURN_CANCELS, subjects.CALL_ENDED),
        # Watched for the agents' prompts, tools and knowledge; seeded into an empty bucket.
        buckets=(AGENTS_BUCKET,),
        watch=(AGENTS_BUCKET,),
        objects_read=(KNOWLEDGE_BUCKET,),  # the uploaded documents, followed and indexed
    ),
    "tts": Permissions(
        publish=(subjects.audio_out(ANY), subjects.tts_events(ANY)),
        subscribe=(subjects.TTS_SYNTHESIZE, subjects.ALL_TURN_CANCELS, subjects.CALL_ENDED),
    ),
}


def inbox_prefix(user: str) -> str:
    """The inbox prefix of `user`'s connection (nats-py's `inbox_prefix`): its request
    replies and KV watches arrive under it, and only it may subscribe there."""
    return f"{INBOX}.{user}"


def kv_subjects(bucket: str, watch: bool = False) -> tuple[str, ...]:
    """What nats-py's KV client publishes to use `bucket` (stream `KV_<bucket>`): create or
    look up the bucket, get a key (direct or stream get), put, create, update and delete
    keys; with `watch`, the ordered consumer a watch runs on."""
    stream = f"KV_{bucket}"
    api = "$JS.API"
    used = [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.CREATE.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"$KV.{bucket}.>",
    ]
    if watch:
        used += [
            f"{api}.CONSUMER.CREATE.{stream}",
            f"{api}.CONSUMER.CREATE.{stream}.>",
            f"{api}.CONSUMER.INFO.{stream}.>",
            f"{api}.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>",  # flow control answers of the watch's push consumer
        ]
    return tuple(used)


def object_subjects(bucket: str, write: bool = False) -> tuple[str, ...]:
    """What voxline/agents/documents.py (and nats-py's object store under it) publishes to use
    the object store `bucket` (stream `OBJ_<bucket>`): create or look up the bucket, get an
    object's meta, read its chunks and follow the metas through ordered consumers; with
    `write`, put and delete objects (chunks and metas under `$O.<bucket>.>`, the old chunks
    purged)."""
    stream = f"OBJ_{bucket}"
    api = "$JS.API"
    used = [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.CREATE.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"$JS.FC.{stream}.>",  # flow control answers of the ordered consumers
    ]
    if write:
        used += [f"{api}.STREAM.PURGE.{stream}", f"$O.{bucket}.>"]
    return tuple(used)


def publish_allow(service: str) -> tuple[str, ...]:
    """Every subject `service` may publish to (besides replies to requests it received)."""
    p = PERMISSIONS[service]
    kv = [s for b in p.buckets for s in kv_subjects(b, watch=b in p.watch)]
    objects = [s for b in p.objects for s in object_subjects(b, write=True)]
    objects += [s for b in p.objects_read for s in object_subjects(b)]
    return (*p.publish, *kv, *objects)


def subscribe_allow(service: str) -> tuple[str, ...]:
    """Every subject `service` may subscribe to: its contract subjects and its own inbox."""
    return (*PERMISSIONS[service].subscribe, f"{inbox_prefix(service)}.>")
