"""The reference shop: five services, each its own process with its own database."""
