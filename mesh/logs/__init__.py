"""Logs: JSON lines carrying trace ids (``setup``), and one line per handled RPC (``server``)."""
