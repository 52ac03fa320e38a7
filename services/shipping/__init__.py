"""Shipping: deliveries scheduled for orders, and their cancellation."""
