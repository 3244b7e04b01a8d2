"""Streaming speech-to-text worker: owns a call's caller audio once the orchestrator
assigns it, and turns it into speech-started / transcript / speech-ended events."""
