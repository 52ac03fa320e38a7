"""Zero trust between services without a sidecar: workload identity from Consul Connect's CA.

Each process gets a SPIFFE-identified leaf certificate for its own service name from its local
Consul agent and follows rotation with blocking queries; servers require a client certificate
chained to the current roots and ask the agent's intentions whether the caller's service may
call them; clients check that the server they reached holds the identity of the service they
asked for. The parts:

    spiffe.py          SPIFFE IDs and the server name Consul puts in a leaf's CN
    settings.py        SecuritySettings: mTLS on (the default) or the loud plaintext switch
    peer.py            who called: the peer's service from its certificate (or, plaintext, a header)
"""
