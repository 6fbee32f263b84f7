"""The rhaas agent: the program inside the FPBL (Fast Provisioning Boot Loader). Standard library only.

It must import nothing outside Python's standard library, and nothing heavy from it: the FPBL ships only
the stdlib modules these modules import (see `rhaas.provisioning.fpbl_python`). Every module of this
package ships in the FPBL.
"""
