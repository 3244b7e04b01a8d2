"""Who owns a call: a lease per call in JetStream KV, and the call's state beside it.

Exactly one orchestrator acts on a call. It holds the call's lease (`CALL_LEASES_BUCKET`,
key = call id) and renews it by compare-and-set on the entry's revision; when the owner
stops renewing (it died, it is cut off), another orchestrator that watched the revision
stand still for the lease time takes the lease over, by compare-and-set too, so only one
can win. A lease with no owner was handed over on purpose (a draining orchestrator) and is
taken at once. The owner keeps the call's serialisable state in `CALL_STATE_BUCKET` (same
key): what the new owner resumes from. Both entries are deleted when the call ends.

The state's encoding is the orchestrator's own (its `Call`); only orchestrators read it.
"""

from __future__ import annotations

import msgspec

CALL_LEASES_BUCKET = "voxline_call_leases"
CALL_STATE_BUCKET = "voxline_call_state"


class CallLease(msgspec.Struct, frozen=True, kw_only=True):
    owner: str  # the orchestrator's instance id; "" = handed over, free to take now
    renewed_at_us: int  # for people reading the bucket; takeover never compares clocks
    # Counts owners: 1 for the first, +1 at each takeover. Orders carry it (`epoch`), and
    # whoever has seen a newer one drops them.
    epoch: int = 1
