"""Backends: what a node's switch ports and BMC really are.

A base instance drives hardware through drivers (`rhaas.drivers`). A recursive instance drives its
upstream HIL-compatible service instead (`rhaas.backends.upstream`): it plugs in as one more switch driver
and one more OBM driver, so the core rules and the networking worker are the same at every level.
"""
