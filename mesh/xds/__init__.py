"""``mesh xds``: an xDS v3 control plane (ADS, state of the world) fed by Consul.

Plain gRPC clients in any language (``xds:///inventory``) get the mesh's balancing, retries,
outlier ejection and mTLS from it, without tsunagu's own channel: :mod:`mesh.xds.catalog`
follows Consul, :mod:`mesh.xds.resources` turns a snapshot into Envoy resources,
:mod:`mesh.xds.server` serves them, and :mod:`mesh.xds.main` runs the process.
"""
