"""Keep the libraries' own output off the terminal, so an error stays one line.

GDAL prints ``ERROR 1: PROJ: ...`` on stderr by itself when an error happens outside a rasterio
error handler (e.g. parsing a bad CRS), although rasterio raises the same error as an exception
that carbongeo reports; torch, numpy and others emit Python warnings. By default both are
silenced: GDAL's messages go nowhere unless ``CPL_LOG`` is set, and Python warnings go to the log,
shown from ``-v`` on. ``-vv`` leaves GDAL's output alone.
"""

from __future__ import annotations

import logging
import os

VERBOSE = 1
"""Verbosity (``-v``) from which library warnings are shown."""
DEBUG = 2
"""Verbosity (``-vv``) from which GDAL prints its own messages again."""


def quiet_libraries(verbosity: int) -> None:
    """Route GDAL's and Python's warnings away from stderr according to ``verbosity``.

    Args:
        verbosity: -1 for ``-q``, 0 by default, 1 for ``-v``, 2 for ``-vv``.
    """
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(
        logging.WARNING if verbosity >= VERBOSE else logging.ERROR
    )
    if verbosity < DEBUG and "CPL_LOG" not in os.environ:
        from rasterio.env import set_gdal_config

        set_gdal_config("CPL_LOG", os.devnull)
