"""REST/JSON <-> gRPC gateway built at runtime from the services' descriptors."""
