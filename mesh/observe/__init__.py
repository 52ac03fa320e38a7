"""Seeing the mesh: what every instance exposes, gathered into one picture.

:mod:`mesh.observe.model` is that picture as plain values; the collector fills it from
Consul (instances, health, ``metrics_port``) and each instance's ``/metrics``; ``mesh top``
prints it and ``mesh dashboard`` shows it live.
"""
