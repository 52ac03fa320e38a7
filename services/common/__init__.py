"""Plumbing shared by the shop's services (storage, errors, identity, pagination)."""
