"""The orchestrator's spans of a call: the call, from the CallStart it took to the call's
end, and one per turn of the agent, from the turn's start until the caller heard all of
it or it was cancelled.

Spans are this process's objects, so they live beside the call's state, not in it; the
state keeps the call span's traceparent, so an orchestrator that resumes the call hangs
the turns it starts under the same call span, in the same trace.

What the orchestrator sends for a turn carries the turn's context, so the brain's reply,
TTS's sentences and the gateway's pause clears are the turn's children. A `TurnCancel`
carries the call's instead: the clear it causes comes after the cancelled turn ended.
"""

from __future__ import annotations

from opentelemetry.trace import Span

from proto.headers import TRACEPARENT, call_headers
from proto.messages import TurnCancel
from services.orchestrator.call import Call
from services.orchestrator.effects import Publish
from services.orchestrator.metrics import outcome
from services.orchestrator.turn import Turn
from voxline import tracing


class CallSpans:
    def __init__(self, call: Call, call_span: Span | None = None) -> None:
        """`call_span`: the span of a call taken here; None for a call resumed from a
        snapshot, whose call span another orchestrator started."""
        self.call_id = call.call_id
        self._call_span = call_span
        self._call_context = {TRACEPARENT: call.traceparent} if call.traceparent else {}
        self._turns: dict[int, tuple[Span, str]] = {}  # open turn spans, with their traceparent
        # Turns before this one were begun elsewhere (a resumed call): not ours to trace.
        self._next_turn_id = call.next_turn_id

    def turns_begun(self, call: Call) -> None:
        """Open a span for each turn the last step began (before its effects go out: the
        turn's own requests must carry the turn's context)."""
        for turn in reversed(call.turns):
            if turn.turn_id < self._next_turn_id:
                break
            self._open(turn)
        self._next_turn_id = call.next_turn_id

    def _open(self, turn: Turn) -> None:
        span = tracing.start_span(
            "turn",
            parent=self._call_span,
            headers=self._call_context,
            call_id=self.call_id,
            turn_id=turn.turn_id,
            attributes={"kind": turn.kind, "preemptive": turn.preemptive},
        )
        self._turns[turn.turn_id] = (span, tracing.traceparent(span))

    def turns_ended(self, call: Call) -> None:
        """End the spans of turns the last step finished or cancelled (after its effects)."""
        for turn_id in [t for t in self._turns if _over(call, t)]:
            span, _ = self._turns.pop(turn_id)
            turn = _turn(call, turn_id)
            span.set_attribute("cancelled", turn is not None and turn.cancelled)
            span.end()

    def headers(self, effect: Publish) -> dict[str, str]:
        """NATS headers of a message the call sends."""
        turn_id = effect.turn_id
        if turn_id is not None and turn_id in self._turns and not isinstance(effect.message, TurnCancel):
            return call_headers(self.call_id, turn_id, self._turns[turn_id][1] or None)
        return call_headers(self.call_id, turn_id, self._call_context.get(TRACEPARENT))

    def end(self, call: Call, handed_over: bool) -> None:
        """The call ended here, or this orchestrator let it go: end every span still open."""
        for span, _ in self._turns.values():
            span.set_attribute("unfinished", True)
            span.end()
        self._turns.clear()
        if self._call_span is not None:
            if handed_over:
                self._call_span.set_attribute("handed_over", True)
            else:  # the bounded outcome, not the reason: a failure's reason may quote a provider
                self._call_span.set_attribute("outcome", outcome(call.record))
            self._call_span.end()


def _turn(call: Call, turn_id: int) -> Turn | None:
    return next((t for t in reversed(call.turns) if t.turn_id == turn_id), None)


def _over(call: Call, turn_id: int) -> bool:
    turn = _turn(call, turn_id)
    return turn is None or not turn.active
