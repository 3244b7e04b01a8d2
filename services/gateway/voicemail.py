"""Answering-machine detection (AMD) for outbound calls, and the voicemail left on a machine.

`POST /v1/calls` with `machine_detection` places the call with Twilio's synchronous AMD,
`MachineDetection=DetectMessageEnd`: Twilio waits until it knows who answered and, for a
machine, until its greeting ended (the beep), then fetches our voice URL with `AnsweredBy`
(human, machine_end_beep, machine_end_silence, machine_end_other, fax, unknown).
https://www.twilio.com/docs/voice/answering-machine-detection (the MachineDetection
parameter and the AnsweredBy values) and
https://www.twilio.com/docs/voice/api/call-resource#create-a-call-resource.

A machine gets the voicemail message read by Twilio's `<Say>` (Twilio's text-to-speech
voice, not the agent's) and a hang-up; it never gets a media stream, so no agent talks
to a voicemail box. A fax gets a hang-up. `human` and `unknown` get the conversation.

The message travels in the voice URL's query (`voicemail=`): Twilio signs the whole URL it
requests, query included, so the webhook's signature check covers the text and no store is
needed between placing the call and Twilio's request. Its length is bounded twice: the
text (MAX_VOICEMAIL_CHARS) and the encoded voice URL (MAX_VOICE_URL_CHARS).
"""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

MACHINE_DETECTION = "DetectMessageEnd"
VOICEMAIL_QUERY = "voicemail"
MAX_VOICEMAIL_CHARS = 1000
# ASSUMPTION: Twilio's docs found here give no limit for a webhook URL; 2048 characters is
# the limit every HTTP stack along the way is known to accept. Non-ASCII text percent-encodes
# to up to 9 characters per character, so a long message in such a script may not fit.
MAX_VOICE_URL_CHARS = 2048
# `machine_start` only comes with MachineDetection=Enable (an answer as soon as a machine is
# recognised, before its greeting ended); we never ask for it, but it is a machine all the same.
MACHINE = frozenset({"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"})
FAX = "fax"
VOICEMAIL_LEFT = "voicemail"  # end reasons of a call a machine answered
NO_MESSAGE = "machine"


def answered_by_machine(answered_by: str) -> bool:
    """Whether Twilio's AnsweredBy says nobody will talk to the agent (a machine or a fax)."""
    return answered_by in MACHINE or answered_by == FAX


def voicemail_twiml(answered_by: str, message: str) -> tuple[str, str]:
    """The TwiML for a call a machine answered, and the call's end reason: the message said
    once after the beep, then a hang-up; a fax or an empty message only hangs up."""
    response = VoiceResponse()
    text = message.strip()
    reason = NO_MESSAGE
    if text and answered_by in MACHINE:
        response.say(text)
        reason = VOICEMAIL_LEFT
    response.hangup()
    return str(response), reason
