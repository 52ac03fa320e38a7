"""The shop across hosts on one machine: network namespaces for hosts, a real Consul cluster."""
