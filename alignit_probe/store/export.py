"""netCDF output: a store is always written as zarr (chunks appended batch by batch, resumable) and converted once
complete, since a netCDF file cannot be grown crash-consistently."""

from __future__ import annotations

from pathlib import Path

import xarray as xr


def export_netcdf(src: Path, dst: Path) -> Path:
    """Write the zarr store ``src`` as the netCDF file ``dst`` (h5netcdf), read lazily (dask): a store larger than
    memory is copied chunk by chunk."""
    tree = xr.open_datatree(src, engine="zarr", chunks={})
    try:
        tree.to_netcdf(dst, engine="h5netcdf")
    finally:
        tree.close()
    return dst
