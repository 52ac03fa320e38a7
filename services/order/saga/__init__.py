"""The order saga: its step table, the orchestrator, the background runner, the operator's
CLI and the crash-injection faults, apart from the order's pure rules (``domain``)."""
