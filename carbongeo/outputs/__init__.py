"""What a finished run hands to other tools: xarray objects, a CF datacube and a STAC catalog.

* :mod:`~carbongeo.outputs.units`: emission units, parsed and converted (per cell, per km2, flux).
* :mod:`~carbongeo.outputs.geodesy`: the true area (m2) and lon/lat of every grid pixel.
* :mod:`~carbongeo.outputs.files`: where a run keeps the files this package reads.
* :mod:`~carbongeo.outputs.arrays`: :func:`open_predictions` and :func:`open_tiles` (xarray).
* :mod:`~carbongeo.outputs.datacube`: the CF-1.8 datacube, written to netCDF or Zarr.
* :mod:`~carbongeo.outputs.stac`: the STAC catalog of the prediction COGs.
"""
