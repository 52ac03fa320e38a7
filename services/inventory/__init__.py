"""Inventory: the product catalog and stock held by reservations."""
