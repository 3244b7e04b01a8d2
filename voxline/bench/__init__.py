"""`voxline bench`: the caller simulator at 1 to 200 concurrent calls against a fake-provider
stack with fixed latencies, reporting what the brief's targets are stated in (pipeline
overhead, barge-in as heard, stale audio, backchannel handling, cut-off slow speakers)."""
