"""carbongeo: downscale coarse carbon-emission rasters to fine, mass-conserving GIS-ready maps."""

from carbongeo.errors import CarbongeoError

__version__ = "0.1.0"

__all__ = ["CarbongeoError", "__version__"]
