"""The lab: virtual bare metal on one Linux machine (root) for development, tests, demos and benchmarks.

An Open vSwitch in userspace is the site's switch (`ovs`), QEMU processes are its nodes (`qemu`), a
virtual BMC per node speaks real IPMI on 127.0.0.1 (`vbmc`), and test OS images are built from Debian
packages (`images`, with the product's `rhaas.imaging`). Nothing here is used by a production rhaas
server, and production code must not import it (tests/test_import_boundaries.py checks).
"""
