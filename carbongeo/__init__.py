"""carbongeo: downscale coarse carbon-emission rasters to fine, mass-conserving GIS-ready maps."""

from __future__ import annotations

from typing import Any

from carbongeo.errors import CarbongeoError

__version__ = "0.1.0"

__all__ = ["CarbongeoError", "__version__", "open_predictions", "open_tiles", "select_tile"]

_ARRAYS = ("open_predictions", "open_tiles", "select_tile")


def __getattr__(name: str) -> Any:
    # The xarray API is imported on first use, so `import carbongeo` (and the CLI) stay light.
    if name in _ARRAYS:
        from carbongeo.outputs import arrays

        return getattr(arrays, name)
    raise AttributeError(f"module 'carbongeo' has no attribute {name!r}")
