"""The OpenAI SDK's errors as ProviderErrors, for the brain's chat and the TTS speech
provider alike: the same SDK fails the same ways, and the message must never carry the
response body (OpenAI echoes a masked key in its 401 message)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx2
import openai

from services.providers import ProviderError, kind_of_status


@contextlib.contextmanager
def openai_errors(provider: str, silence: str) -> Iterator[None]:
    """Inside, an SDK failure becomes a ProviderError; `silence` describes a timeout."""
    try:
        yield
    except openai.APIStatusError as exc:
        status = exc.status_code
        raise ProviderError(provider, kind_of_status(status), "request refused", status) from None
    except (openai.APITimeoutError, httpx2.TimeoutException):
        raise ProviderError(provider, "timeout", silence) from None
    except (openai.APIConnectionError, httpx2.TransportError) as exc:
        raise ProviderError(provider, "dropped", f"connection lost ({type(exc).__name__})") from None
