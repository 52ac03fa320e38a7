"""User: accounts, password login that issues JWTs, and profiles."""
