"""Subject names, version 1. Per-call subjects put the call id in the subject so a
consumer subscribes to exactly the calls it owns and NATS does the routing."""

from __future__ import annotations

PREFIX = "vx1"

# Queue groups: one member of each group receives each message.
QUEUE_ORCHESTRATOR = "orchestrator"
QUEUE_STT = "stt"
QUEUE_BRAIN = "brain"
QUEUE_TTS = "tts"

# Work requests (queue-grouped, request/reply where the caller needs an owner).
CALL_START = f"{PREFIX}.orchestrator.call_start"  # gateway -> orchestrator (request)
STT_ASSIGN = f"{PREFIX}.stt.assign"  # orchestrator -> stt (request)
BRAIN_TURN = f"{PREFIX}.brain.turn"  # orchestrator -> brain
TTS_SYNTHESIZE = f"{PREFIX}.tts.synthesize"  # orchestrator -> tts
# orchestrator -> brain (request): the post-call analysis of an ended call. Not a per-call
# subject: the call's subjects are let go at its end, and any brain worker may answer.
BRAIN_ANALYSE = f"{PREFIX}.brain.analyse"

# Broadcast: every instance of every service hears it.
CALL_ENDED = f"{PREFIX}.calls.ended"  # orchestrator -> all (release per-call resources)

# Wildcards for services that serve every call.
ALL_TURN_CANCELS = f"{PREFIX}.call.*.cancel"


def stt_ping(worker_id: str) -> str:
    """Liveness of one STT worker (request with an empty body, empty reply): the worker
    holding a call's audio is sticky, so its owner must notice when it dies."""
    return f"{PREFIX}.stt.ping.{worker_id}"


def gateway_ping(gateway_id: str) -> str:
    """Liveness of one gateway (request with an empty body, empty reply): the gateway
    holding a call's media stream is sticky too; when it dies, the owner ends the call."""
    return f"{PREFIX}.gateway.ping.{gateway_id}"


def stt_release(worker_id: str) -> str:
    """orchestrator -> one STT worker: let a call go. Sent before the call is moved to
    another worker, so a worker that only looked dead (slow pings) never keeps listening
    beside its replacement."""
    return f"{PREFIX}.stt.release.{worker_id}"


def stt_replay(worker_id: str) -> str:
    """orchestrator -> the call's STT worker: publish the call's recent events again."""
    return f"{PREFIX}.stt.replay.{worker_id}"


def call_prefix(call_id: str) -> str:
    return f"{PREFIX}.call.{call_id}"


def audio_in(call_id: str) -> str:
    """Caller audio (binary AudioFrame), gateway -> the call's STT worker."""
    return f"{PREFIX}.call.{call_id}.audio.in"


def audio_out(call_id: str) -> str:
    """Reply audio (binary AudioFrame), tts -> gateway."""
    return f"{PREFIX}.call.{call_id}.audio.out"


def gateway_events(call_id: str) -> str:
    """Media-stream events (marks played, DTMF, stop), gateway -> orchestrator."""
    return f"{PREFIX}.call.{call_id}.gateway"


def stt_events(call_id: str) -> str:
    """Speech and transcript events, stt -> orchestrator."""
    return f"{PREFIX}.call.{call_id}.stt"


def reply_text(call_id: str) -> str:
    """Reply sentences as the brain streams them, brain -> orchestrator."""
    return f"{PREFIX}.call.{call_id}.reply"


def tts_events(call_id: str) -> str:
    """Synthesis results (sentence done, errors), tts -> orchestrator."""
    return f"{PREFIX}.call.{call_id}.tts"


def caller_audio(call_id: str) -> str:
    """The call's recent caller audio, from its gateway (request/reply): a new STT worker
    transcribes what its dead predecessor heard but never transcribed."""
    return f"{PREFIX}.call.{call_id}.caller_audio"


def stream_resume(call_id: str) -> str:
    """A new media stream of a call whose stream broke (request/reply), gateway -> the
    call's owner: only the owner subscribes, so it reaches the one process that can say yes."""
    return f"{PREFIX}.call.{call_id}.resume"


def stream_superseded(call_id: str) -> str:
    """A newer media stream took the call (gateway -> gateways): the holder of the older one
    closes it."""
    return f"{PREFIX}.call.{call_id}.stream"


def control(call_id: str) -> str:
    """Orders to the gateway (hang up), orchestrator -> gateway."""
    return f"{PREFIX}.call.{call_id}.control"


def turn_cancel(call_id: str) -> str:
    """A turn is cancelled: brain, tts and gateway drop everything of it."""
    return f"{PREFIX}.call.{call_id}.cancel"


def call_id_of(subject: str) -> str:
    """The call id inside a per-call subject (`vx1.call.<id>.<kind>`)."""
    return subject.split(".", 3)[2]


def per_call(subject: str) -> bool:
    """A subject of one call (`vx1.call.<id>.…`), not a wildcard over every call."""
    parts = subject.split(".", 3)
    return len(parts) == 4 and parts[:2] == [PREFIX, "call"] and parts[2] not in ("*", ">")


_PER_INSTANCE = ("ping", "release", "replay")  # vx1.<service>.<what>.<instance id>


def kind_of(subject: str) -> str:
    """What a subject is, with its call id or instance id replaced by `*`
    (`vx1.call.*.audio.out`): a metric label of bounded cardinality. `_INBOX` for the
    replies of requests, `other` for anything outside the contract."""
    if subject.startswith("_INBOX."):
        return "_INBOX"
    parts = subject.split(".")
    if len(parts) >= 4 and parts[:2] == [PREFIX, "call"]:
        parts[2] = "*"
    elif len(parts) == 4 and parts[0] == PREFIX and parts[2] in _PER_INSTANCE:
        parts[3] = "*"
    kind = ".".join(parts)
    return kind if kind in _KINDS else "other"


_KINDS = frozenset(
    {
        CALL_START,
        STT_ASSIGN,
        BRAIN_TURN,
        TTS_SYNTHESIZE,
        BRAIN_ANALYSE,
        CALL_ENDED,
        *(per_instance("*") for per_instance in (stt_ping, gateway_ping, stt_release, stt_replay)),
        *(
            of_call("*")
            for of_call in (
                audio_in,
                audio_out,
                gateway_events,
                stt_events,
                reply_text,
                tts_events,
                caller_audio,
                stream_resume,
                stream_superseded,
                control,
                turn_cancel,
            )
        ),
    }
)
