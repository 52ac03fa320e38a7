"""The order service: prices orders from the catalog and drives them through the saga steps."""
