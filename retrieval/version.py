"""The library version, in one place (read by packaging, manifests and the CLI)."""

__version__ = "0.2.0"
