"""The dev stack's supervisor over real processes: a dead service is restarted, a dead
nats-server stops the stack with an error instead of leaving services retrying in silence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from voxline.devstack import DevStack, StackError, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(
        profile="fake",
        http_port=free_port(),
        data_dir=tmp_path_factory.mktemp("nats-own"),
        log_dir=tmp_path_factory.mktemp("logs-own"),
        verbose=False,
    )
    try:
        stack.start(timeout=90)
        yield stack
    finally:
        stack.stop()


def test_a_dead_service_is_restarted_and_a_dead_nats_server_stops_the_stack(own_stack: DevStack) -> None:
    assert own_stack.supervise_once() == []
    own_stack.processes["tts"].kill()
    assert own_stack.supervise_once() == ["tts"]
    assert own_stack.processes["tts"].alive and own_stack.processes["tts"].restarts == 1
    own_stack.processes["nats"].kill()
    with pytest.raises(StackError, match="nats-server exited"):
        own_stack.supervise_once()
