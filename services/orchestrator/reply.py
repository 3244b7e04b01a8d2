"""The agent's reply in the call's core: the brain is asked for an answer, its sentences
go to speech as they come (held while a preemptive reply waits for the end of turn), and
a brain that falls silent is replaced or apologised for.

The watchdog follows the brain's progress, not its whole answer: a worker holding a turn
says so every `brain_heartbeat_s` (ReplyProgress), so a dead one is noticed
`brain_timeout_s` after its last word, and the turn is asked again of another worker
(`BrainTurn.attempt`; replies of an older attempt are dropped) as long as nothing of the
answer was said yet.
"""

from __future__ import annotations

import logging

from proto import subjects
from proto.messages import BrainTurn, ReplyDone, ReplyError, ReplyProgress, ReplySentence
from services.orchestrator import costs, intents
from services.orchestrator.speech import Speech
from services.orchestrator.states import CallState
from services.orchestrator.timers import Timer, TimerKind
from services.orchestrator.turn import Turn

log = logging.getLogger("voxline.orchestrator.call")

BRAIN_RETRIES = 1  # asks of another brain worker when the one holding a turn falls silent


class Reply(Speech):
    def start_reply(self, caller_text: str, tentative: bool) -> Turn:
        """Ask the brain for an answer; a tentative one is held until it is committed."""
        turn = self.new_turn("reply", caller_text=caller_text)
        turn.committed = not tentative
        turn.preemptive = tentative
        turn.mark("brain_request", self.now_us)
        self._ask_brain(turn)
        return turn

    def _ask_brain(self, turn: Turn) -> None:
        call = self.call
        request = BrainTurn(
            call_id=call.call_id,
            turn_id=turn.turn_id,
            agent_id=call.agent.id,
            agent_version=call.record.agent_version,  # the brain answers as the call's agent
            history=list(call.history),
            user_text=turn.caller_text,
            requested_at_us=self.now_us,
            attempt=turn.brain_attempt,
            variables=call.variables(),
        )
        self.start_timer(Timer(TimerKind.BRAIN, turn.turn_id), call.limits.brain_timeout_s)
        self.publish(subjects.BRAIN_TURN, request, turn.turn_id)

    def on_brain_progress(self, msg: ReplyProgress) -> None:
        turn = self.live_turn(msg.turn_id)
        if turn is None or turn.closed or turn.brain_done or msg.attempt != turn.brain_attempt:
            return
        self.start_timer(Timer(TimerKind.BRAIN, turn.turn_id), self.call.limits.brain_timeout_s)

    def on_brain_silent(self, turn_id: int) -> None:
        """No heartbeat nor sentence for brain_timeout_s: the worker died, or none took the
        turn. Before any sentence came, another worker is asked (the caller hears the answer
        a moment later); after some, or on the second silence, the agent apologises."""
        turn = self.live_turn(turn_id)
        if turn is None or turn.closed or turn.brain_done:
            return
        if not turn.sentences and not turn.held and turn.brain_attempt < BRAIN_RETRIES:
            turn.brain_attempt += 1
            log.warning(
                "brain silent for %.1fs on turn %d: asking another worker", self.call.limits.brain_timeout_s, turn_id
            )
            self._ask_brain(turn)
            return
        self.on_reply_error(
            ReplyError(
                call_id=self.call.call_id, turn_id=turn_id, message="brain timed out", attempt=turn.brain_attempt
            )
        )

    def commit_reply(self, turn: Turn, commit: intents.Commit) -> None:
        """The caller's turn ended: timings for the record, then release held sentences."""
        turn.committed = True
        turn.mark("speech_end", commit.speech_end_us)
        turn.mark("stt_final", commit.stt_final_us)
        turn.mark("end_of_turn", self.now_us)
        turn.provider_ms["stt"] = commit.stt_provider_ms
        self.go(CallState.THINKING)
        held, turn.held = turn.held, []
        for text in held:
            self.synthesize(turn, text)
        if turn.brain_done and not turn.closed:
            self.synthesize(turn, "", last=True)

    def on_sentence(self, msg: ReplySentence) -> None:
        turn = self.live_turn(msg.turn_id)
        if turn is None or turn.closed or msg.attempt != turn.brain_attempt:
            return
        # The watchdog follows progress: a brain that dies after some sentences must not
        # leave the turn without its end (the caller would wait in silence).
        self.start_timer(Timer(TimerKind.BRAIN, turn.turn_id), self.call.limits.brain_timeout_s)
        if msg.seq == 0:
            turn.mark("first_token", msg.first_token_us or msg.at_us)
            turn.mark("first_sentence", msg.at_us)
            turn.provider_ms["llm"] = msg.provider_ms
        if turn.committed:
            self.synthesize(turn, msg.text)
        else:
            turn.held.append(msg.text)

    def on_reply_done(self, msg: ReplyDone) -> None:
        costs.reply_finished(self.call.record.costs, msg.usage)  # the tokens were spent, heard or not
        turn = self.live_turn(msg.turn_id)
        if turn is None or turn.closed or msg.attempt != turn.brain_attempt:
            return
        self.cancel_timer(Timer(TimerKind.BRAIN, turn.turn_id))
        turn.brain_done = True
        turn.action, turn.action_arg = msg.action, msg.action_arg
        turn.tool_calls = list(msg.tool_calls)
        if turn.committed:
            self.synthesize(turn, "", last=True)

    def on_reply_error(self, msg: ReplyError) -> None:
        turn = self.live_turn(msg.turn_id)
        if turn is None or turn.closed or msg.attempt != turn.brain_attempt:
            return  # a reply already given up on, or a worker asked before the one now answering
        log.error("ReplyError: %s", msg.message)
        self.cancel_timer(Timer(TimerKind.BRAIN, turn.turn_id))
        turn.brain_done = True
        turn.tool_calls = list(msg.tool_calls)  # run before the failure: they happened
        if not turn.sentences and not turn.held:
            turn.kind = "apology"
        if turn.committed:
            self.synthesize(turn, self.call.agent.apology)
            self.synthesize(turn, "", last=True)
        else:
            turn.held.append(self.call.agent.apology)  # goes out with the commit
