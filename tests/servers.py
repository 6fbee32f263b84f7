"""Compatibility: tests import the server helper from here."""

from rhaas.lab.servers import Server, free_port

__all__ = ["Server", "free_port"]
