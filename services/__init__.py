"""Voxline's five services. Each runs as `python -m services.<name>` and talks to the
others only over the NATS bus, through the contract in `proto`."""
