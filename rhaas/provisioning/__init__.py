"""Provisioning: the FPBL builder (`fpbl`, with `fpbl_python` for the Python it ships), an exported FPBL
as the API reads it (`manifest`), the boot service (`bootservice`) and how long a job's phases took
(`phases`). The provisioning lifecycle's rules are `rhaas.core.provisioning`'s.

What the API server imports from here (`manifest`, `phases`) must not import the builder, the image
building (`rhaas.imaging`) or the lab.
"""
