"""The ports a test stack hands its children must not be ones the kernel can hand again to
an outgoing connection before the child binds (a CI flake: the gateway's exit code 3)."""

from __future__ import annotations

import socket

from voxline.devstack import _ephemeral_range, free_port, free_ports_in_a_row


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_repeated() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(port < low for port in ports)
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_ports_in_a_row_are_all_free_and_not_handed_out_again() -> None:
    first = free_ports_in_a_row(4)
    row = set(range(first, first + 4))
    later = {free_port() for _ in range(300)}
    assert not row & later
