"""Real data: the Jinjiang CO2 maps (30 m truth, 500 m product, 30 m and 500 m aux layers).

The data live outside the repository, in ``../shared/realdata/jinjiang_co2`` (see
``shared/realdata/SOURCES.md``); every test here is skipped when that folder is absent.

The fast tests tile the real rasters into a temporary folder (about a second) and check what the
synthetic tests cannot: the real files' nodata conventions (float32 -3.4e38, float64 -DBL_MAX,
uint8 255, and the Fragstats layers' undeclared -999), a 500 m product on a grid that does not nest
in the 30 m one, and the shipped pipeline files. The end-to-end run (tile -> preview with a tiny
model and two epochs, a few minutes on 2 CPU cores) is marked ``slow``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from carbongeo.cli.app import main
from carbongeo.config import load_config
from carbongeo.grid import Window
from carbongeo.stages.tile import coarse_scene_grid, tile_years
from carbongeo.store.tiles import load_index, read_window

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "jinjiang_co2"
PIPELINES = REPO / "pipelines"
YEAR = 2013

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not (DATA / "CO30.tif").is_file(),
        reason=f"real data not found: {DATA} (the shared/realdata folder next to the repository)",
    ),
]

# Band name -> (file, kind, transform, nodata override) of every aux layer the dataset offers.
AUX = {
    "poi_density": ("POID30.tif", "extensive", "log1p", None),
    "urban_share": ("PUA30.tif", "intensive", "none", None),
    "function_mix": ("fcmix30.tif", "intensive", "none", None),
    "division": ("division500.tif", "intensive", "none", -999.0),
    "mesh": ("mesh500.tif", "intensive", "log1p", -999.0),
    "np": ("np500.tif", "intensive", "none", -999.0),
    "pd": ("pd500.tif", "intensive", "none", -999.0),
}
FRAGSTATS = ("division", "mesh", "np", "pd")


def _pipeline_text(
    workdir: Path, *, coarse: bool = True, bands: tuple[str, ...] = tuple(AUX), extra: str = ""
) -> str:
    lines = [
        f'workdir = "{workdir.as_posix()}"',
        f"years = {YEAR}",
        "[grid]",
        "tile_size = 128",
        "scale = 16",
        "[target]",
        f'path = "{(DATA / "CO30.tif").as_posix()}"',
        'units = "t CO2 / cell / yr"',
    ]
    if coarse:
        lines += ["[coarse]", f'path = "{(DATA / "CO500.tif").as_posix()}"']
    for name in bands:
        file, kind, transform, nodata = AUX[name]
        lines += [
            "[[aux]]",
            f'name = "{name}"',
            f'path = "{(DATA / file).as_posix()}"',
            f'kind = "{kind}"',
            f'transform = "{transform}"',
        ]
        if nodata is not None:
            lines.append(f"nodata = {nodata}")
    return "\n".join(lines) + "\n" + extra


@pytest.fixture(scope="module")
def tiled(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The real data, every aux layer included, tiled once for the module."""
    folder = tmp_path_factory.mktemp("jinjiang")
    path = folder / "jinjiang.toml"
    path.write_text(_pipeline_text(folder / "run"), encoding="utf-8")
    config = load_config(path, check_files=True)
    index = tile_years(config, [YEAR], progress=False, scheduler="threads", workers=2)
    return config, index


def _cube(config, kind: str) -> np.ndarray:
    return np.load(config.tiles_dir / f"{kind}_{YEAR}.npy", mmap_mode="r")


def _scene(config, index, kind: str) -> np.ndarray:
    """A cube reassembled on the unpadded scene, ``[C, H, W]``."""
    grid = index.grid
    return read_window(_cube(config, kind), index, Window(0, 0, grid.height, grid.width))


def _co30() -> tuple[np.ma.MaskedArray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(DATA / "CO30.tif") as src:
        return src.read(1, masked=True), src.transform, src.crs


# --------------------------------------------------------------------------- fast tests
def test_grid_is_co30s_own_grid(tiled: tuple) -> None:
    _, index = tiled
    truth, transform, crs = _co30()
    grid = index.grid
    assert (grid.height, grid.width) == truth.shape == (1426, 1022)
    assert grid.transform.almost_equals(transform, precision=1e-6)
    assert rasterio.crs.CRS.from_wkt(grid.crs) == crs
    assert (grid.tile_size, grid.scale) == (128, 16)
    # 12 x 8 tiles of 128 px cover the scene; 480 m coarse cells start at CO30's corner.
    assert (grid.tile_rows, grid.tile_cols) == (12, 8)
    assert coarse_scene_grid(grid).transform.almost_equals(
        rasterio.Affine(480.0, 0.0, transform.c, 0.0, -480.0, transform.f), precision=1e-6
    )


def test_truth_total_kept_and_nodata_stays_nodata(tiled: tuple) -> None:
    config, index = tiled
    truth, _, _ = _co30()
    source_total = float(truth.sum(dtype=np.float64))
    y = _scene(config, index, "Y")[0].astype(np.float64)
    aligned = float(np.nansum(y))
    assert aligned == pytest.approx(source_total, rel=1e-4)
    totals = index.totals[YEAR]
    assert totals["target_aligned"] == pytest.approx(source_total, rel=1e-4)
    assert totals["target_source"] == pytest.approx(source_total, rel=1e-4)
    # The grid is the target's own: nodata maps to NaN pixel for pixel, and is never 0.
    np.testing.assert_array_equal(np.isnan(y), np.ma.getmaskarray(truth))
    assert int((y == 0).sum()) == int((truth.filled(-1) == 0).sum())
    # Padding past the scene is NaN too (12 x 128 > 1426 rows, 8 x 128 > 1022 columns).
    cube = _cube(config, "Y")
    assert np.isnan(cube[-1, 0, -1, -1])


def test_coarse_product_total_inside_the_grid_is_kept(tiled: tuple) -> None:
    config, index = tiled
    # Exact area overlap of every 500 m cell with every 480 m cell that touches the scene (the
    # grids share the CRS and axes, so the overlap is a product of 1-D overlaps); the cells the
    # scene edge cuts then keep only their share inside the scene.
    cells = coarse_scene_grid(index.grid)
    cx0, _, _, cy1 = cells.bounds
    side = cells.transform.a
    with rasterio.open(DATA / "CO500.tif") as src:
        values = src.read(1, masked=True).filled(0).astype(np.float64)
        t = src.transform
        x0 = t.c + t.a * np.arange(src.width)
        y0 = t.f + t.e * np.arange(src.height)
    gx = cx0 + side * np.arange(cells.width)
    gy = cy1 - side * np.arange(cells.height)
    fx = (
        np.clip(
            np.minimum(x0[None] + t.a, gx[:, None] + side) - np.maximum(x0[None], gx[:, None]),
            0,
            None,
        )
        / t.a
    )  # [coarse col, source col]
    fy = (
        np.clip(
            np.minimum(y0[None], gy[:, None]) - np.maximum(y0[None] + t.e, gy[:, None] - side),
            0,
            None,
        )
        / -t.e
    )  # [coarse row, source row]
    share = index.grid.coarse_inside_share(Window(0, 0, cells.height, cells.width))
    expected = float((fy @ values @ fx.T * share).sum())
    coarse = _cube(config, "C")
    assert float(np.nansum(coarse, dtype=np.float64)) == pytest.approx(expected, rel=1e-4)
    assert index.totals[YEAR]["coarse_aligned"] == pytest.approx(expected, rel=1e-4)
    # The grids do not nest: the crop cuts 180 m (west), 60 m (north) and 100 m (east) strips,
    # and the scene edge cuts the last row and column of 480 m cells.
    assert expected < float(values.sum()) * (1 - 1e-4)
    assert np.nanmin(coarse) >= 0


def test_aux_nodata_is_nan_never_a_value(tiled: tuple) -> None:
    config, index = tiled
    x = _scene(config, index, "X")
    assert index.bands == list(AUX)
    finite = np.isfinite(x)
    assert not np.isinf(x).any()
    # No sentinel survives: not -999 (Fragstats), not 255 (POI), not -3.4e38 / -1.8e308.
    assert not (x[finite] <= -999).any()
    assert np.nanmin(x) >= 0
    poi = x[index.bands.index("poi_density")]
    assert np.nanmax(poi) <= np.log1p(14) + 1e-5  # POID30 counts are 0-14 (255 = nodata)
    share = x[index.bands.index("urban_share")]
    assert np.nanmax(share) <= 1.0 + 1e-3
    truth, _, _ = _co30()
    truth_valid = ~np.ma.getmaskarray(truth)
    for name in ("poi_density", "urban_share", "function_mix"):
        band = finite[index.bands.index(name)]
        # The 30 m layers are valid wherever the truth is.
        assert band[truth_valid].all(), name
    for name in FRAGSTATS:
        band = finite[index.bands.index(name)]
        # -999 became nodata: 16% of the truth-valid pixels lie in 500 m cells without a
        # Fragstats value (counted independently by nearest-neighbour lookup).
        assert 0.14 < 1 - band[truth_valid].mean() < 0.18, name


def test_split_leaves_tiles_for_every_subset(tiled: tuple) -> None:
    config, _ = tiled
    result = CliRunner().invoke(main, ["-q", "split", "-c", str(config.path)])
    assert result.exit_code == 0, result.output
    split = json.loads((config.tiles_dir / "split.json").read_text())
    assert split["train"] and split["val"] and split["test"]
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))


@pytest.mark.parametrize("name", ["jinjiang.toml", "jinjiang-ideal.toml"])
def test_shipped_pipeline_files_load(name: str) -> None:
    config = load_config(PIPELINES / name, check_files=True)
    assert config.years == (YEAR,)
    assert (config.grid.tile_size, config.grid.scale) == (128, 16)
    assert config.target.path_for(YEAR).resolve() == (DATA / "CO30.tif").resolve()
    assert config.workdir.resolve().parent == (REPO / "runs").resolve()
    assert set(config.dasymetric_bands()) <= set(config.aux_names)
    if name == "jinjiang.toml":
        assert config.coarse is not None
        assert config.coarse.path_for(YEAR).resolve() == (DATA / "CO500.tif").resolve()
    else:
        assert config.coarse is None
    for aux in config.aux:
        assert Path(aux.path).resolve().parent == DATA.resolve()


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("coarse", [True, False], ids=["real-500m", "ideal"])
def test_end_to_end_on_real_data(tmp_path: Path, coarse: bool) -> None:
    """tile -> split -> train (tiny, 2 epochs) -> mosaic -> evaluate -> preview via the CLI."""
    extra = (
        "[split]\nmin_valid_fraction = 0.3\nseed = 2\n"
        "[model]\ndim = 8\ndepth = 1\n"
        '[train]\nepochs = 2\nnum_workers = 0\ndevice = "cpu"\n'
        '[evaluate]\ndasymetric = ["urban_share", "poi_density"]\n'
    )
    path = tmp_path / "jinjiang.toml"
    # The 30 m layers only, as in pipelines/: the Fragstats nodata would mask 16% of the city.
    bands = tuple(b for b in AUX if b not in FRAGSTATS)
    path.write_text(
        _pipeline_text(tmp_path / "run", coarse=coarse, bands=bands, extra=extra), encoding="utf-8"
    )
    config = load_config(path, check_files=True)
    assert (config.model.dim, config.train.epochs) == (8, 2)
    steps = [
        ["tile"],
        ["split"],
        ["train"],
        ["mosaic", "--years", str(YEAR)],
        ["evaluate"],
        ["preview", "--year", str(YEAR)],
    ]
    for step in steps:
        result = CliRunner().invoke(main, ["-q", step[0], "-c", str(path), *step[1:]])
        assert result.exit_code == 0, f"{step}: {result.output}"

    index = load_index(config.tiles_dir)
    with rasterio.open(config.predictions_dir / f"Pred_{YEAR}.tif") as src:
        pred = src.read(1, masked=True)
        assert src.crs == rasterio.crs.CRS.from_wkt(index.grid.crs)
        assert src.transform.almost_equals(index.grid.transform, precision=1e-6)
        assert src.shape == (index.grid.height, index.grid.width)
    # Every 480 m cell with a valid pixel sums to its coarse input (real product or truth).
    s = index.grid.scale
    h, w = index.grid.height // s, index.grid.width // s
    filled = pred.filled(0).astype(np.float64)[: h * s, : w * s]
    sums = filled.reshape(h, s, w, s).sum(axis=(1, 3))
    if coarse:
        c_cube = np.load(config.tiles_dir / f"C_{YEAR}.npy", mmap_mode="r")
        cells = read_window(c_cube, index, Window(0, 0, h, w))[0].astype(np.float64)
    else:
        truth = _co30()[0].filled(0).astype(np.float64)[: h * s, : w * s]
        cells = truth.reshape(h, s, w, s).sum(axis=(1, 3))
    placed = (~np.ma.getmaskarray(pred)[: h * s, : w * s]).reshape(h, s, w, s).any(axis=(1, 3))
    check = placed & np.isfinite(cells) & (cells > 1.0)
    np.testing.assert_allclose(sums[check], cells[check], rtol=1e-4)

    report = json.loads((config.reports_dir / "evaluation.json").read_text())
    methods = report["sections"][0]["methods"]
    assert {"model", "uniform", "bicubic", "dasymetric:urban_share"} <= set(methods)
    assert np.isfinite(methods["model"]["mae"])
    assert (config.reports_dir / f"preview_{YEAR}.png").stat().st_size > 10_000
