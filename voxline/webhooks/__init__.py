"""Per-agent webhooks to the customer: signing (`signing`), the events a call's record
implies (`events`) and their delivery (`dispatcher`, whose docstring says where it runs
and why)."""
