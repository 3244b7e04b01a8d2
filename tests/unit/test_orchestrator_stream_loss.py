"""A call whose media stream broke (its gateway died, the link to Twilio dropped): the owner
waits for Twilio to come back with a new stream through the `<Connect action>`, goes on
from there with the unanswered question asked again, and ends the call if none comes.
The pure core with event sequences, no bus."""

from __future__ import annotations

import asyncio

import msgspec

from proto.messages import BrainTurn, CallStopped, StreamResume, TurnCancel
from services.orchestrator.core import STREAM_RESUME_WAIT_S
from services.orchestrator.effects import SaveRecord
from services.orchestrator.states import CallState
from services.orchestrator.timers import TimerKind
from tests.unit.orchestrator_driver import CALL_ID, Driver

QUESTION = "What are your opening hours?"
REPLY = ["We open at nine and close at six.", "On Saturdays we close at noon."]
LOST = "media stream lost: gateway gone"


def lost(d: Driver, stream_sid: str = "MZ1") -> None:
    d.send(CallStopped(call_id=CALL_ID, reason=LOST, at_us=d.now_us, lost=True, stream_sid=stream_sid))


def resumed(d: Driver, stream_sid: str = "MZ2", gateway: str = "gateway-b") -> None:
    d.send(StreamResume(call_id=CALL_ID, stream_sid=stream_sid, gateway_id=gateway, at_us=d.now_us))


def test_a_lost_stream_does_not_end_the_call_until_the_wait_is_over() -> None:
    d = Driver()
    d.greet()
    lost(d)
    assert d.call.state is not CallState.ENDED and d.call.record.status == "in-progress"
    timer = d.pending(TimerKind.STREAM_LOST)
    assert timer is not None and timer.deadline_us == d.now_us + int(STREAM_RESUME_WAIT_S * 1e6)
    d.wait(STREAM_RESUME_WAIT_S * 1000)
    d.fire(TimerKind.STREAM_LOST)
    assert d.call.state is CallState.ENDED
    assert d.call.record.status == "ended" and d.call.record.end_reason == LOST
    assert any(isinstance(e, SaveRecord) for e in d.effects)


def test_a_stream_resumed_mid_reply_asks_the_unheard_question_again_on_the_new_stream() -> None:
    d = Driver()
    d.greet()
    reply = d.answered(QUESTION, REPLY)  # on its way to the dead gateway: nothing heard
    lost(d)
    d.effects = []
    resumed(d)
    assert d.pending(TimerKind.STREAM_LOST) is None
    assert d.call.stream_sid == "MZ2" and d.call.record.stream_resumes == 1
    [cancel] = d.published(TurnCancel)
    assert cancel.turn_id >= reply.turn_id  # everything sent to the old stream is dropped
    [request] = d.published(BrainTurn)
    assert request.user_text == QUESTION and request.turn_id > cancel.turn_id
    assert d.call.state is CallState.THINKING


def test_a_resume_before_the_loss_is_noticed_still_goes_on() -> None:
    """Twilio's `<Connect action>` is immediate; the owner's pings notice a dead gateway
    seconds later: that verdict names the stream it was about, and after the resume it is
    old news that must not start the wait for a stream that is already back."""
    d = Driver()
    d.greet()
    d.play(d.call.turns[-1])
    resumed(d)
    lost(d, stream_sid="MZ1")
    assert d.call.stream_lost == "" and d.pending(TimerKind.STREAM_LOST) is None
    assert d.call.state is CallState.LISTENING


def test_the_end_of_an_old_stream_is_ignored_after_the_resume() -> None:
    d = Driver()
    d.greet()
    lost(d)
    resumed(d)
    d.send(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=d.now_us, stream_sid="MZ1"))
    assert d.call.state is not CallState.ENDED
    d.send(CallStopped(call_id=CALL_ID, reason="caller hung up", at_us=d.now_us, stream_sid="MZ2"))
    assert d.call.state is CallState.ENDED and d.call.record.end_reason == "caller hung up"


def test_a_second_loss_while_waiting_keeps_the_first_deadline() -> None:
    d = Driver()
    d.greet()
    lost(d)
    first = d.pending(TimerKind.STREAM_LOST)
    d.wait(3000)
    lost(d, stream_sid="")
    assert d.pending(TimerKind.STREAM_LOST) == first


def test_a_moved_call_s_new_stt_worker_is_told_how_many_finals_came_before() -> None:
    """The fake STT numbers utterances by its script: without the count, a worker that takes
    a call over would start the script again and 'hear' the first line a second time."""
    from proto.messages import SttAssign
    from services.orchestrator.worker import with_unheard_audio
    from services.stt.providers.fake import FakeSttProvider
    from voxline.config import SttSettings

    d = Driver()
    d.greet()
    d.answered(QUESTION, REPLY)
    assert d.call.finals_heard == 1
    assign = with_unheard_audio(SttAssign(call_id=CALL_ID, agent_id="test"), d.call)
    assert assign.finals_heard == 1
    script = SttAssign(call_id=CALL_ID, agent_id="test", custom_parameters={"fake_transcripts": "one|two|three"})
    moved = msgspec.structs.replace(script, finals_heard=assign.finals_heard)

    async def emit(_message: object) -> None:
        pass

    session = asyncio.run(FakeSttProvider(SttSettings()).open(moved, emit))  # type: ignore[arg-type]
    assert session.current_text == "two"
