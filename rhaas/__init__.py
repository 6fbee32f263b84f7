"""rhaas: a HIL-compatible bare-metal cloud that runs on hardware or, recursively, on any HIL upstream."""

__version__ = "0.1.0"
