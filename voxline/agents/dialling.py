"""Which numbers an agent may dial: E.164 numbers and allowlists of numbers or prefixes.

Every number Voxline dials is paid for by the agent's owner, and some (premium-rate +1900,
international satellite ranges) cost dollars a minute and pay the fraudster. A caller can
talk a language model into anything, so a number the model chose is dialled only when the
owner allowed it in the agent's TOML; nothing the caller says can widen that.

An allowlist entry is an exact E.164 number (`+14155550123`: that number only) or a
prefix ending in `*` (`+1415555*`: every E.164 number that starts with +1415555).
Entries are strict: ASCII digits only, no spaces, so what the owner reads is what is
matched. A number the model returns may carry ASCII formatting (spaces, dashes, dots,
parentheses), which is removed before the strict check; anything else (other digits
than 0-9, letters, a missing `+`) is refused, never guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# E.164: "+", a country code that does not start with 0, at most 15 digits in all. Twilio
# refuses shorter than 7; so do we (the same rule as POST /v1/calls always had).
E164 = re.compile(r"\+[1-9][0-9]{6,14}")
PREFIX = re.compile(r"\+[1-9][0-9]{0,13}\*")  # at least the country code's first digit
_FORMATTING = str.maketrans("", "", " -.()")  # ASCII only: a no-break space is not formatting
ENTRY_HELP = "an E.164 number like +14155550123, or a prefix like +1415555*"


class DestinationNotAllowed(PermissionError):
    """A number the agent does not allow was about to be dialled."""


def is_e164(number: str) -> bool:
    return E164.fullmatch(number) is not None


def is_entry(entry: str) -> bool:
    """An allowlist entry as the owner must write it: an E.164 number or a prefix with `*`."""
    return is_e164(entry) or PREFIX.fullmatch(entry) is not None


def normalise(number: str) -> str:
    """The model's number without ASCII formatting, when it is E.164; else ""."""
    stripped = number.translate(_FORMATTING)
    return stripped if is_e164(stripped) else ""


def masked(number: str) -> str:
    """Enough of a number for a log line to show where it went (the country and area
    code), not whom: a model's argument may hold anything the caller said."""
    return f"{number[:5]}... ({len(number)} chars)" if is_e164(number) else f"not an E.164 number ({len(number)} chars)"


def invalid_entries(entries: Iterable[str]) -> list[int]:
    return [i for i, entry in enumerate(entries) if not is_entry(entry)]


class Allowlist:
    """Matching of E.164 numbers against exact numbers and `*` prefixes."""

    def __init__(self, entries: Sequence[str]) -> None:
        self.exact = [e for e in entries if not e.endswith("*")]
        self.prefixes = [e[:-1] for e in entries if e.endswith("*")]

    def allows(self, number: str) -> bool:
        """Only a well-formed E.164 number can be allowed: a prefix match on anything else
        (a trailing letter, a second `+`, Arabic-Indic digits) would dial what Twilio makes of it."""
        if not is_e164(number):
            return False
        return number in self.exact or any(number.startswith(p) for p in self.prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def pattern(self) -> str:
        """A JSON-schema `pattern` (ECMA regex) of the numbers allowed, for the model."""
        alternatives = [re.escape(e[1:]) for e in self.exact] + [f"{re.escape(p[1:])}[0-9]*" for p in self.prefixes]
        return rf"^\+({'|'.join(alternatives)})$"

    def describe(self) -> str:
        """The allowed numbers in words, for the model."""
        parts = [*self.exact, *(f"any number starting with {p}" for p in self.prefixes)]
        return ", ".join(parts) if parts else "none"
