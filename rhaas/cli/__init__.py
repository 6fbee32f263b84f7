"""The ``rhaas`` command-line interface. It talks to a server only through `rhaas.client`."""
