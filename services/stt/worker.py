"""The STT worker: takes calls assigned by the orchestrator (sticky: one worker holds a
call's audio until CallEnded) and publishes what its provider hears.

Assignment is request/reply on a queue group, so exactly one worker answers and the
orchestrator knows who owns the call. The reply is `SttAssigned`, or `SttError` when the
provider cannot open a session, so the orchestrator need not wait for a timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import Span
from prometheus_client import Gauge

from proto import subjects
from proto.audio_frame import AudioFrame
from proto.messages import (
    CallEnded,
    CallerAudio,
    CallerAudioRequest,
    Message,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
    SttAssign,
    SttAssigned,
    SttError,
    SttRelease,
    SttReplay,
    Transcript,
)
from services.common import QueueSeat, RecentCalls, call_context, launch, outgoing_headers, unsubscribe_quietly
from services.providers import close_provider
from services.stt.providers import SttProvider, SttSession, make_provider
from voxline import tracing
from voxline.bus import Bus
from voxline.config import SttSettings
from voxline.telemetry import stage_histogram

log = logging.getLogger("voxline.stt")

ACTIVE_CALLS = Gauge("voxline_stt_active_calls", "Calls whose audio this STT worker holds.")
CATCH_UP_TIMEOUT_S = 1.0
RECENT_EVENTS = 32  # per call, kept for a new owner's replay: a few utterances' worth
FINAL_LATENCY = stage_histogram(
    "voxline_stt_final_latency_seconds", "End of the caller's speech to the final transcript."
)


class SttStatus(msgspec.Struct, frozen=True):
    provider: str
    active_calls: int
    calls: list[str]  # the call ids whose audio this worker holds


@dataclass
class HeldCall:
    """A call this worker listens to."""

    call_id: str
    session: SttSession
    headers: dict[str, str]
    audio: Subscription | None = None
    speech_end_us: int = 0  # of the utterance awaiting its final transcript
    failed: bool = False
    utterance: Span | None = None  # from the caller's speech start to its final transcript
    # Live frames wait here while the audio a dead predecessor never transcribed is fed
    # first (SttAssign.audio_since_us); None once caught up.
    backlog: list[AudioFrame] | None = None
    catch_up: asyncio.Task[None] | None = None
    # The call's latest events, for a new owner that resumed from an older snapshot.
    recent: deque[SpeechStarted | Transcript | SpeechEnded | SpeechPaused] = field(
        default_factory=lambda: deque(maxlen=RECENT_EVENTS)
    )


class SttWorker:
    def __init__(self, bus: Bus, settings: SttSettings, provider: SttProvider) -> None:
        self.bus = bus
        self.settings = settings
        self.provider = provider
        self._calls: dict[str, HeldCall] = {}
        self._ended = RecentCalls()  # a late assign for an ended call must not leak a session
        self._subs: list[Subscription] = []
        self._releases: set[asyncio.Task[bool]] = set()
        self._ready = False
        self._none_held = asyncio.Event()  # set while no call is held: what a drain waits for
        self._none_held.set()
        self._seat = QueueSeat(bus, subjects.STT_ASSIGN, subjects.QUEUE_STT, self.on_assign, settings.stt_max_calls)

    async def start(self) -> None:
        await self._seat.join()
        self._subs = [
            await self.bus.subscribe(subjects.CALL_ENDED, self.on_call_ended),
            await self.bus.serve_ping(subjects.stt_ping(self.settings.instance_id)),
            await self.bus.subscribe(subjects.stt_release(self.settings.instance_id), self.on_release),
            await self.bus.subscribe(subjects.stt_replay(self.settings.instance_id), self.on_replay),
        ]
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    def status(self) -> SttStatus:
        return SttStatus(provider=self.provider.name, active_calls=len(self._calls), calls=sorted(self._calls))

    async def on_assign(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, SttAssign):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            if message.call_id in self._ended:
                log.warning("assign for a call that already ended; not taken")
                return
            if message.call_id not in self._calls:
                try:
                    taken = await self._take(message, msg)
                except Exception as exc:
                    log.exception("stt provider %s could not open a session", self.provider.name)
                    await self._reply(msg, SttError(call_id=message.call_id, message=f"{self.provider.name}: {exc}"))
                    return
                if not taken:
                    return
            await self._reply(
                msg,
                SttAssigned(call_id=message.call_id, worker_id=self.settings.instance_id, provider=self.provider.name),
            )

    async def _take(self, assign: SttAssign, msg: Msg) -> bool:
        """Open a session and subscribe to the call's audio; False if the call ended meanwhile."""
        call_id = assign.call_id
        headers = outgoing_headers(msg, call_id, None)  # the call's trace: utterance spans hang under it

        async def emit(event: Message) -> None:
            # Looked up, not captured: the session keeps this closure, and a closure holding
            # the HeldCall that holds the session is a reference cycle. Each ended call's
            # session, subscription and buffers would then wait for a full garbage
            # collection, which a busy worker runs rarely: RSS grew about 1 MiB a minute in
            # a 100-call soak. An event after the release has no call to go to.
            held = self._calls.get(call_id)
            if held is not None:
                await self._emit(held, event)

        held = HeldCall(call_id, await self.provider.open(assign, emit), headers)
        if call_id in self._ended:
            await held.session.close()
            return False
        self._calls[call_id] = held
        self._none_held.clear()
        ACTIVE_CALLS.set(len(self._calls))
        self._seat.holding(len(self._calls))

        if assign.audio_since_us:
            held.backlog = []

        async def on_frame(frame: AudioFrame, _: Msg) -> None:
            if held.backlog is not None:
                held.backlog.append(frame)
                return
            await self._feed(held, frame)

        held.audio = await self.bus.subscribe_frames(subjects.audio_in(call_id), on_frame)
        if call_id in self._ended:  # released while subscribing, before the audio was known
            await unsubscribe_quietly(held.audio)
            return False
        log.info("took call (provider %s)", self.provider.name)
        if held.backlog is not None:
            held.catch_up = asyncio.create_task(
                self._catch_up(held, assign.audio_since_us), name=f"stt-catch-up-{call_id}"
            )
        return True

    async def _catch_up(self, held: HeldCall, since_us: int) -> None:
        """Transcribe first what the call's previous worker heard and never transcribed
        (the gateway keeps the last seconds of caller audio), then the live audio that
        arrived meanwhile, each frame once."""
        last_us = since_us
        try:
            reply = await self.bus.request(
                subjects.caller_audio(held.call_id),
                CallerAudioRequest(call_id=held.call_id, since_us=since_us),
                timeout=CATCH_UP_TIMEOUT_S,
            )
            frames = [AudioFrame.decode(f) for f in reply.frames] if isinstance(reply, CallerAudio) else []
            log.info("catching up on %d frame(s) of caller audio", len(frames))
            for frame in frames:
                await self._feed(held, frame)
                last_us = max(last_us, frame.timestamp_us)
        except Exception as exc:  # the gateway may be gone too: go on with the live audio
            log.warning("no caller audio to catch up on: %s", exc)
        while held.backlog:
            frame = held.backlog.pop(0)
            if frame.timestamp_us > last_us:
                await self._feed(held, frame)
        held.backlog = None

    async def _feed(self, held: HeldCall, frame: AudioFrame) -> None:
        if held.failed:
            return
        try:
            await held.session.feed(frame)
        except Exception as exc:
            # Give up the call rather than log an error every 20 ms; the orchestrator
            # decides what the caller hears (it may assign the call again).
            held.failed = True
            log.exception("stt provider %s failed; releasing the call", self.provider.name)
            await self._emit(held, SttError(call_id=held.call_id, message=f"{self.provider.name}: {exc}"))
            self._release_soon(held)

    def _release_soon(self, held: HeldCall) -> None:
        """Let a failed call go, so the orchestrator can assign it again (maybe to us)."""
        held.failed = True
        # Unsubscribing from inside the subscription's own callback would cancel it.
        release = asyncio.create_task(self._release(held.call_id), name=f"stt-release-{held.call_id}")
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)

    async def _emit(self, held: HeldCall, event: Message) -> None:
        """Publish a session event; a bus failure is logged, never raised into the provider."""
        self._trace(held, event)
        if isinstance(event, SpeechStarted | Transcript | SpeechEnded | SpeechPaused):
            held.recent.append(event)
        if isinstance(event, SpeechEnded):
            held.speech_end_us = event.speech_end_us
        elif isinstance(event, Transcript) and event.is_final and held.speech_end_us:
            FINAL_LATENCY.observe(max(0, event.at_us - held.speech_end_us) / 1e6)
            held.speech_end_us = 0
        if isinstance(event, SttError):
            log.error("stt error (provider %s): %s", self.provider.name, event.message)
        try:
            await self.bus.publish(subjects.stt_events(held.call_id), event, held.headers)
        except Exception:
            log.exception("could not publish %s", type(event).__name__)
        if isinstance(event, SttError) and not held.failed:
            self._release_soon(held)  # the session reported its own failure: it is finished

    @staticmethod
    def _trace(held: HeldCall, event: Message) -> None:
        """One span per utterance: the caller's speech start to its final transcript."""
        if isinstance(event, SpeechStarted | Transcript) and held.utterance is None:
            held.utterance = tracing.start_span("utterance", headers=held.headers, call_id=held.call_id)
        if held.utterance is None:
            return
        if isinstance(event, SpeechEnded):
            held.utterance.add_event("speech ended")
        elif isinstance(event, Transcript) and event.is_final:
            held.utterance.set_attribute("empty", not event.text.strip())  # whether words came, not which
            held.utterance.end()
            held.utterance = None
        elif isinstance(event, SttError):
            tracing.mark_error(held.utterance, "stt error")
            held.utterance.end()
            held.utterance = None

    async def on_replay(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, SttReplay):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            held = self._calls.get(message.call_id)
            if held is None:
                return
            again = [event for event in held.recent if event.at_us > message.since_us]
            log.info("replaying %d event(s) to the call's new owner", len(again))
            for event in again:
                try:
                    await self.bus.publish(subjects.stt_events(held.call_id), event, held.headers)
                except Exception:
                    log.exception("could not replay %s", type(event).__name__)

    async def on_release(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, SttRelease):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            if await self._release(message.call_id):
                log.warning("let the call go: %s", message.reason)

    async def on_call_ended(self, message: Message, msg: Msg) -> None:
        if not isinstance(message, CallEnded):
            log.warning("ignored %s on %s", type(message).__name__, msg.subject)
            return
        with call_context(message.call_id):
            self._ended.put(message.call_id, 1)
            if await self._release(message.call_id):
                log.info("released call (%s)", message.reason)

    async def _release(self, call_id: str) -> bool:
        held = self._calls.pop(call_id, None)
        ACTIVE_CALLS.set(len(self._calls))
        self._seat.holding(len(self._calls))
        if not self._calls:
            self._none_held.set()
        if held is None:
            return False
        if held.catch_up is not None:
            held.catch_up.cancel()
        if held.utterance is not None:  # the call ended mid-utterance
            held.utterance.set_attribute("cancelled", True)
            held.utterance.end()
            held.utterance = None
        if held.audio is not None:
            await unsubscribe_quietly(held.audio)
            held.audio = None  # its callback holds `held`: no cycle left for the collector
        held.catch_up = None
        try:
            await held.session.close()
        except Exception:
            log.exception("stt provider %s failed to close its session", self.provider.name)
        return True

    async def _reply(self, msg: Msg, reply: Message) -> None:
        if not msg.reply:
            log.warning("%s has no reply subject; nobody to answer", msg.subject)
            return
        try:
            await self.bus.respond(msg, reply)
        except Exception:
            log.exception("could not answer on %s", msg.subject)

    async def drain(self) -> None:
        """Take no new call (leave the assign queue); keep the calls held, their audio,
        call ends and the liveness ping, until each call ends: the STT is sticky, so a
        rolling update must not move a caller mid-sentence."""
        self._ready = False
        await self._seat.close()
        await self._none_held.wait()

    async def stop(self) -> None:
        self._ready = False
        await self._seat.close()
        for sub in self._subs:
            await unsubscribe_quietly(sub)
        for call_id in list(self._calls):
            with call_context(call_id):
                await self._release(call_id)
        await close_provider(self.provider)


async def start(bus: Bus, settings: SttSettings) -> SttWorker:
    return await launch(SttWorker(bus, settings, make_provider(settings.stt_provider, settings)))
