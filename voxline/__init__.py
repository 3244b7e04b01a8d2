"""Voxline shared runtime: bus client, audio codecs, settings, telemetry, CLI, dev stack."""

__version__ = "0.1.0"
