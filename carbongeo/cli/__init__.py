"""The command line: a thin click layer over the Python API."""

from carbongeo.cli.app import main

__all__ = ["main"]
