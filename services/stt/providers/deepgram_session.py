"""One call's Deepgram socket: connection lifecycle, replay, and Deepgram's events -> ours.

Onsets. Deepgram's SpeechStarted fires on noise and echo as well as on speech (its
maintainers call it noise detection: deepgram-python-sdk #403, deepgram-js-sdk #369), and
no words need follow. Ours goes out (it pauses the agent at once: barge-in) when the line's
own energy agrees that something voice-loud is there, or when words come; an onset only
Deepgram heard (faint echo, a hum) is held until one of those. An utterance that has no
words when the line goes quiet ends as noise: SpeechEnded and an empty final, so the
orchestrator resumes the reply (or restarts its idle timer) instead of waiting on speech
that never was.

Pauses. Deepgram's interims come about once a second, so they do not say when the caller
stopped; the line's energy does (`pause_watch`). After `early_pause_ms` of quiet we send
Finalize, and Deepgram's answer (`from_finalize`) holds every word said so far: a
`SpeechPaused` with those words lets a preemptive reply start. The answer is not the end of
the utterance by itself (the caller may go on); the utterance ends when the line has been
quiet for the endpointing time and the answer is in, or at Deepgram's own speech_final or
UtteranceEnd if they come first.

Times. `SpeechEnded.speech_end_us` is the wall clock of the end of the last word (audio time
mapped through frame arrivals); `at_us` is when the confirming silence had elapsed (speech
end + endpointing, or + utterance_end_ms on the UtteranceEnd path). `Transcript.provider_ms`
is Deepgram's own time beyond that silence: arrival of the final result minus speech end
minus the silence. So end-of-turn silence + provider_ms = speech end -> final, counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import websockets
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.listen.v1.socket_client import AsyncV1SocketClient
from deepgram.listen.v1.types import (
    ListenV1Error,
    ListenV1Metadata,
    ListenV1Results,
    ListenV1SpeechStarted,
    ListenV1UtteranceEnd,
)

from proto.audio_frame import AudioFrame
from proto.messages import Message, SpeechEnded, SpeechPaused, SpeechStarted, SttError, Transcript
from services.providers import ProviderError, count_provider_error, kind_of_status
from services.stt.providers.base import Emit
from services.stt.providers.deepgram_ledger import BYTES_PER_S, AudioLedger, seconds_to_offset
from services.stt.providers.pause_watch import PauseEvent, PauseWatch
from voxline.config import SttSettings
from voxline.telemetry import now_us

log = logging.getLogger("voxline.stt.deepgram")

PROVIDER = "deepgram"
FATAL_KINDS = frozenset({"auth", "bad_request"})  # trying again cannot help
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 2.0
TICK_S = 0.25  # an idle socket is checked this often for keep-alive and stalls
REPLAY_CHUNK = BYTES_PER_S // 2  # replayed audio goes out in 500 ms messages
CLOSE_WAIT_S = 2.0  # for Deepgram's last results after CloseStream
# Finalize's answer "is not guaranteed if there is no significant amount of audio data to
# process" (https://developers.deepgram.com/docs/finalize): wait this long, then go on
# with the words already final.
FINALIZE_ANSWER_WAIT_S = 1.0
# Deepgram's onset counts as voice when the line is voice-loud this soon after it.
ONSET_AGREE = BYTES_PER_S * 3 // 10


class DeepgramSession:
    def __init__(
        self, call_id: str, client: AsyncDeepgramClient, params: dict[str, Any], settings: SttSettings, emit: Emit
    ) -> None:
        self.call_id, self.client, self.params, self.settings = call_id, client, params, settings
        self._emit = emit
        self.ledger = AudioLedger(settings.deepgram.replay_max_s)
        self.connections = 0  # sockets opened so far (tests and logs)
        self._socket: AsyncV1SocketClient | None = None
        self._live = False  # connected and caught up: frames go straight out
        self._base = 0  # call offset where the current connection's audio starts
        self._closing = False
        self._fed = False
        self._failure: str | None = None  # fatal error, reported once
        self._answered = False  # the current connection sent something back
        self._last_sent = time.monotonic()
        self._unanswered_since: float | None = None  # first audio sent after the last message
        self._unanswered_bytes = 0  # audio sent since; a pause in the audio is no stall
        self._task: asyncio.Task[None] | None = None
        self._in_speech = False  # our SpeechStarted went out; SpeechEnded has not yet
        self._held_onset: int | None = None  # Deepgram's onset the line's energy has not shown yet
        self._words: list[str] = []  # finalized text of the current utterance
        self._partial = ""  # the newest interim text beyond the finalized words
        self._speech_end = 0  # call offset of the end of its last word
        self._flush_sent: float | None = None  # monotonic time of our Finalize for this pause
        self._flushed = False  # its answer came (or we stopped waiting for it)
        self._paused_sent = False  # a SpeechPaused went out for this pause
        self.pause = PauseWatch(settings.deepgram.early_pause_ms, int(params["endpointing"]))
        self.on_auth_refused: Callable[[], None] = lambda: None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deepgram-{self.call_id}")

    async def emit(self, event: Message) -> None:
        if not self._closing:  # results flushed by CloseStream belong to a call that ended
            await self._emit(event)

    # --- audio in ----------------------------------------------------------------------

    async def feed(self, frame: AudioFrame) -> None:
        if self._closing or not frame.payload:
            return
        self._fed = True
        if self._failure is not None:
            await self._report_failure()
            return
        offset = self.ledger.end
        self.ledger.append(frame.payload, frame.timestamp_us or now_us())
        if self._live and self._socket is not None:
            try:
                await self._socket.send_media(frame.payload)
            except Exception:
                self._live = False  # the reader sees the close; the frame waits in the ledger
            else:
                self._mark_sent(len(frame.payload))
        event = self.pause.frame(offset, frame.payload)
        if self._held_onset is not None and self.pause.loud_upto > offset:
            log.info("deepgram: the line confirms the onset Deepgram heard")
            await self._start_utterance(offset)
        if self._in_speech:
            await self._on_pause_event(event)
            await self._check_flush_answer()

    async def _on_pause_event(self, event: PauseEvent | None) -> None:
        if event is PauseEvent.PAUSED or (event is PauseEvent.ENDED and self._flush_sent is None):
            await self._flush()
        elif event is PauseEvent.ENDED and self._flushed:
            await self._on_flushed()
        elif event is PauseEvent.RESUMED:
            if self._paused_sent:  # Deepgram says nothing here: to it this is one utterance
                await self.emit(SpeechStarted(call_id=self.call_id, at_us=now_us()))
            self._flush_sent, self._flushed, self._paused_sent = None, False, False

    async def _flush(self) -> None:
        """The line went quiet: ask Deepgram for everything it heard (Finalize)."""
        self._flush_sent, self._flushed = time.monotonic(), False
        if self._live and self._socket is not None:
            with contextlib.suppress(Exception):  # a failed socket is noticed by the reader
                await self._socket.send_finalize()

    async def _check_flush_answer(self) -> None:
        sent = self._flush_sent
        if sent is not None and not self._flushed and time.monotonic() - sent >= FINALIZE_ANSWER_WAIT_S:
            log.info("deepgram: no answer to Finalize within %.1fs", FINALIZE_ANSWER_WAIT_S)
            if self._partial:  # words Deepgram has not finalized: its own endpoint will
                self._flush_sent = None
                return
            await self._on_flushed()

    async def _on_flushed(self) -> None:
        """Deepgram finalized what it heard of this pause: a noise onset ends now; words give
        a SpeechPaused, or end the utterance once the line has been quiet long enough."""
        self._flushed = True
        if not self._in_speech:
            return
        if not self._words:
            await self._end_as_noise()
        elif self.pause.ended:
            await self._end_utterance(self._speech_end, int(self.params["endpointing"]))
        elif not self._paused_sent and self.pause.quiet_from is not None:
            self._paused_sent = True
            at = now_us()
            quiet_from_us = min(at, self.ledger.wall_us(self.pause.quiet_from))
            text = " ".join(self._words)
            # Words so far, as a partial too: over the agent's voice they confirm a barge-in.
            await self.emit(Transcript(call_id=self.call_id, text=text, is_final=False, at_us=at))
            await self.emit(SpeechPaused(call_id=self.call_id, at_us=at, speech_end_us=quiet_from_us, text=text))

    def _mark_sent(self, size: int) -> None:
        self._last_sent = time.monotonic()
        self._unanswered_bytes += size
        if self._unanswered_since is None:
            self._unanswered_since = self._last_sent

    # --- connection lifecycle ---------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            error = await self._connect_once()
            if error is None or self._closing:
                return
            count_provider_error(error)
            failures = 1 if self._answered else failures + 1
            if error.kind == "auth":
                self.on_auth_refused()
            if error.kind in FATAL_KINDS or failures > self.settings.deepgram.max_retries:
                log.error("stt provider %s failed, giving up: %s", PROVIDER, error)
                await self._fail(str(error))
                return
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))
            log.warning("stt provider %s: %s; reconnecting in %.1fs (try %d)", PROVIDER, error, delay, failures)
            await asyncio.sleep(delay)

    async def _connect_once(self) -> ProviderError | None:
        """One socket from handshake to close; None when we closed it, else why it ended."""
        self._answered = False
        timeout = self.settings.deepgram.connect_timeout_s
        connect = self.client.listen.v1.connect(**self.params)
        try:
            socket = await asyncio.wait_for(connect.__aenter__(), timeout)
        except ApiError as exc:  # never str(exc) into a log line: the SDK keeps request headers on it
            status = exc.status_code or 0
            return ProviderError(PROVIDER, kind_of_status(status), "handshake refused", status)
        except TimeoutError:
            return ProviderError(PROVIDER, "timeout", f"no handshake within {timeout:.1f}s")
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            return ProviderError(PROVIDER, "dropped", f"cannot connect ({type(exc).__name__})")
        self.connections += 1
        self._socket = socket
        try:
            await self._replay(socket)
            return await self._read(socket)
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            if self._closing:
                return None
            return ProviderError(PROVIDER, "dropped", f"socket failed ({type(exc).__name__})")
        finally:
            self._socket, self._live = None, False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connect.__aexit__(None, None, None), 1.0)

    async def _replay(self, socket: AsyncV1SocketClient) -> None:
        """Send what Deepgram has not finalized, then go live; results are offset by its start."""
        self._base = cursor = self.ledger.replay_start()
        if self.connections > 1 and self.ledger.end > cursor:
            log.info("deepgram: replaying %.2fs of unacknowledged audio", (self.ledger.end - cursor) / BYTES_PER_S)
        while cursor < self.ledger.end:  # frames arriving meanwhile are appended and sent here too
            chunk = self.ledger.read(cursor, REPLAY_CHUNK)
            await socket.send_media(chunk)
            cursor += len(chunk)
            self._mark_sent(len(chunk))
        self._live = True
        if self._in_speech and self._flush_sent is not None and not self._flushed:
            await self._flush()  # asked while connecting, or the old socket took the answer along

    async def _read(self, socket: AsyncV1SocketClient) -> ProviderError | None:
        while True:
            try:  # not asyncio.wait_for: on 3.11 a cancel landing as recv() completes is lost,
                # and this loop (and the _wind_down waiting for it) would go on for good
                async with asyncio.timeout(TICK_S):
                    message = await socket.recv()
            except TimeoutError:
                message = None
            except websockets.exceptions.ConnectionClosed as exc:
                if self._closing:
                    return None
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                return ProviderError(PROVIDER, "dropped", f"socket closed (code {code})")
            if message is not None:
                self._answered, self._unanswered_since, self._unanswered_bytes = True, None, 0
                try:
                    await self._on_message(message)
                except Exception:
                    log.exception("deepgram: could not handle a %s message", type(message).__name__)
            if self._in_speech:
                await self._check_flush_answer()
            now = time.monotonic()
            stall_s = self.settings.deepgram.stall_timeout_s
            waited = now - self._unanswered_since if self._unanswered_since is not None else 0.0
            if waited > stall_s and self._unanswered_bytes >= stall_s * BYTES_PER_S / 2:
                return ProviderError(PROVIDER, "timeout", "no results while audio flows (stall)")
            if self._live and now - self._last_sent >= self.settings.deepgram.keepalive_s:
                await socket.send_keep_alive()
                self._last_sent = now

    # --- Deepgram events -> ours ------------------------------------------------------

    def _offset(self, seconds: float) -> int:
        return self._base + seconds_to_offset(seconds)

    async def _on_message(self, message: object) -> None:
        if isinstance(message, ListenV1SpeechStarted):
            await self._speech_started(self._offset(message.timestamp))
        elif isinstance(message, ListenV1Results):
            await self._on_results(message)
        elif isinstance(message, ListenV1UtteranceEnd):
            if self._in_speech:  # no speech_final came for this utterance
                end = self._offset(message.last_word_end) if self._words else self._speech_end
                await self._end_utterance(end, self.settings.deepgram.utterance_end_ms)
        elif isinstance(message, ListenV1Metadata):
            log.debug("deepgram: metadata (request %s, %.1fs)", message.request_id, message.duration)
        elif isinstance(message, ListenV1Error):
            log.warning("deepgram: error message %s: %s", message.variant, message.description)

    async def _speech_started(self, offset: int) -> None:
        """Deepgram's VAD heard something: ours goes out only if the line shows it too."""
        if self._in_speech:  # e.g. replayed audio of an utterance already reported
            return
        if self.pause.loud_near(offset, ONSET_AGREE):
            await self._start_utterance(offset)
        else:
            log.info("deepgram: SpeechStarted the line does not show (faint echo or noise?); held")
            self._held_onset = offset

    async def _start_utterance(self, offset: int) -> None:
        self._in_speech, self._held_onset = True, None
        self._speech_end = offset
        self._flush_sent, self._flushed, self._paused_sent = None, False, False
        owed = self.pause.utterance_started()
        at = min(now_us(), self.ledger.wall_us(offset)) if self.ledger.end else now_us()
        await self.emit(SpeechStarted(call_id=self.call_id, at_us=at))
        await self._on_pause_event(owed)

    async def _on_results(self, results: ListenV1Results) -> None:
        alternatives = results.channel.alternatives
        text = alternatives[0].transcript.strip() if alternatives else ""
        end = self._offset(results.start + results.duration)
        if text and not self._in_speech:  # words imply speech, also without vad_events
            await self._start_utterance(self._offset(results.start))
        if not results.is_final:
            if text:
                self._partial = text
                partial = " ".join([*self._words, text])
                await self.emit(Transcript(call_id=self.call_id, text=partial, is_final=False, at_us=now_us()))
            return
        self._partial = ""
        if text:
            self._words.append(text)
            words = alternatives[0].words
            self._speech_end = self._offset(words[-1].end) if words else end
        elif self._held_onset is not None and end > self._held_onset:
            self._held_onset = None  # Deepgram finalized that sound and found no words
        self.ledger.ack(end)
        if results.from_finalize:  # the answer to our Finalize: not an end by itself
            if self._flush_sent is not None and not self._flushed:
                await self._on_flushed()
            return
        if results.speech_final and self._in_speech and self._words:
            await self._end_utterance(self._speech_end, int(self.params["endpointing"]))

    async def _end_utterance(self, speech_end: int, silence_ms: int) -> None:
        arrived = now_us()
        end_us = self.ledger.wall_us(speech_end)
        text = " ".join(self._words)
        self._reset_utterance()
        provider_ms = max(0.0, (arrived - end_us) / 1000.0 - silence_ms)
        confirmed = min(arrived, end_us + silence_ms * 1000)
        await self.emit(SpeechEnded(call_id=self.call_id, at_us=confirmed, speech_end_us=end_us))
        final = Transcript(call_id=self.call_id, text=text, is_final=True, at_us=arrived, provider_ms=provider_ms)
        await self.emit(final)

    async def _end_as_noise(self) -> None:
        """An onset with no words by the time the line went quiet: noise or echo. The empty
        final lets the orchestrator decide at once (a paused reply resumes)."""
        log.info("deepgram: speech started but no words came; ended as noise")
        at = now_us()
        end_us = min(at, self.ledger.wall_us(self.pause.loud_upto)) if self.ledger.end else at
        self._reset_utterance()
        await self.emit(SpeechEnded(call_id=self.call_id, at_us=at, speech_end_us=end_us))
        await self.emit(Transcript(call_id=self.call_id, text="", is_final=True, at_us=at))

    def _reset_utterance(self) -> None:
        self._words, self._partial, self._in_speech = [], "", False
        self._flush_sent, self._flushed, self._paused_sent = None, False, False

    # --- failure and close --------------------------------------------------------------

    async def _fail(self, message: str) -> None:
        self._failure = message
        if self._fed:
            await self._report_failure()

    async def _report_failure(self) -> None:
        message, self._failure = self._failure, ""  # "" = reported: later frames are ignored
        if message:
            await self.emit(SttError(call_id=self.call_id, message=message))

    async def close(self) -> None:
        """Returns at once (releases must not queue behind a slow provider): CloseStream lets
        Deepgram finish the request and close the socket in the background, within a limit."""
        self._closing = True
        socket, task = self._socket, self._task
        if task is None or task.done():
            return
        if socket is None:  # connecting or backing off: nothing to flush
            task.cancel()
            return
        with contextlib.suppress(Exception):
            await socket.send_close_stream()
        winding = asyncio.create_task(_wind_down(task), name=f"deepgram-close-{self.call_id}")
        _WINDING.add(winding)
        winding.add_done_callback(_WINDING.discard)


_WINDING: set[asyncio.Task[None]] = set()  # closing sessions, referenced until done


async def _wind_down(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(task, CLOSE_WAIT_S)  # cancels the session's task on timeout
