"""Fuzz targets: a small smoke batch each in `make test`, time-bounded runs in `make fuzz`
(VOXLINE_FUZZ_MINUTES). The live targets share one real stack (nats-server and the five
services, fake providers) with an API key and a Twilio REST emulator, so every endpoint
can answer its success path too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from tests.emulators.twilio_rest import ACCOUNT_SID, TwilioRestEmulator
from tests.fuzz.harness import COUNTS, full_mode
from tests.integration.conftest import AUTH_TOKEN, own_stack
from voxline.devstack import DevStack

API_KEY = "fuzz-api-key-0123456789abcdef"
FROM_NUMBER = "+15005550001"


def pytest_configure(config: pytest.Config) -> None:
    set_hypothesis_home_dir(Path(__file__).parents[2] / "var" / "hypothesis")  # not .hypothesis in the tree
    config.addinivalue_line("markers", "fuzz: property-based fuzzing (tests/fuzz); long runs with `make fuzz`")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("fuzz counts" + ("" if full_mode() else " (smoke)"))
    for count in COUNTS:
        terminalreporter.write_line(count.line())
    inputs = sum(c.inputs for c in COUNTS)
    failures = sum(len(c.failures) for c in COUNTS)
    minutes = sum(c.seconds for c in COUNTS) / 60
    terminalreporter.write_line(f"{'total':<22} {inputs:>9} inputs  {failures:>3} failures  {minutes:6.2f} min")


@pytest.fixture(scope="session")
def twilio_rest() -> Iterator[TwilioRestEmulator]:
    emulator = TwilioRestEmulator(auth_token=AUTH_TOKEN).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, twilio_rest: TwilioRestEmulator) -> Iterator[DevStack]:
    env = {
        "VOXLINE_API_KEY": API_KEY,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "VOXLINE_TWILIO_API_BASE": twilio_rest.base_url,
        # The fuzzers' own requests must not be refused by the per-key limit they share.
        "VOXLINE_API_RATE_LIMIT_PER_MIN": "0",
    }
    with own_stack(tmp_path_factory, "fuzz", env) as stack:
        yield stack
