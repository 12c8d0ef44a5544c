"""Tests of the streaming mosaic: blending, mass re-projection, nodata and the written outputs."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

import carbongeo.stages.mosaic as mosaic
from carbongeo import __version__
from carbongeo.config import PipelineConfig, parse_config
from carbongeo.errors import CarbongeoError, CheckpointError
from carbongeo.grid import Grid, Window
from carbongeo.io.cog import validate_cog
from carbongeo.models.network import DSTCarbonFormer
from carbongeo.stages.mosaic import (
    MosaicResult,
    WindowBatch,
    axis_profiles,
    blend_profiles,
    coarse_from_fine,
    hann_ramp,
    mosaic_years,
    predict_scene,
)
from carbongeo.store.checkpoint import Checkpoint, save_checkpoint
from carbongeo.store.layout import TilesLayout
from carbongeo.store.tiles import TileIndex, TileRecord, load_index, write_index
from carbongeo.training.normalization import Normalization

WKT = CRS.from_epsg(32650).to_wkt()
TRANSFORM = Affine(100.0, 0.0, 300000.0, 0.0, -100.0, 2600000.0)
UNITS = "t CO2 / cell / yr"


# ----------------------------------------------------------------------------- helpers
def smooth_field(height: int, width: int, offset: float = 2.0) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return (offset + np.sin(rows / 15.0) * np.cos(cols / 21.0)).astype(np.float32)


class ArrayScene:
    """An in-memory window reader: aux = [truth], coarse = truth summed over cells."""

    def __init__(self, grid: Grid, truth: np.ndarray, aux_nodata: np.ndarray | None = None):
        self.grid = grid
        size = grid.tile_size
        rows, cols = grid.padded_shape
        self.truth = np.full((rows + size, cols + size), np.nan, dtype=np.float32)
        self.truth[: grid.height, : grid.width] = truth
        self.aux = self.truth.copy()
        if aux_nodata is not None:
            self.aux[: grid.height, : grid.width][aux_nodata] = np.nan

    def __call__(self, windows: Sequence[Window]) -> WindowBatch:
        truth = np.stack([self.truth[w.slices()] for w in windows])
        aux = np.stack([self.aux[w.slices()] for w in windows])
        mass = coarse_from_fine(truth, self.grid.scale)
        return WindowBatch(
            aux=np.nan_to_num(aux)[:, None, None].repeat(3, axis=2),
            coarse=np.nan_to_num(mass)[:, None, None].repeat(3, axis=2),
            valid=np.isfinite(aux),
            mass=mass,
        )


def run_scene(
    predict: mosaic.Predictor,
    reader: ArrayScene,
    *,
    overlap: int,
    batch_size: int = 4,
    conserve_mass: bool = True,
) -> tuple[np.ndarray, mosaic.SceneStats, list[int]]:
    chunks: list[np.ndarray] = []
    stats = predict_scene(
        predict,
        reader,
        reader.grid,
        chunks.append,
        overlap=overlap,
        batch_size=batch_size,
        conserve_mass=conserve_mass,
    )
    return np.concatenate(chunks), stats, [c.shape[0] for c in chunks]


def odd_grid(height: int = 200, width: int = 333, tile: int = 64, scale: int = 8) -> Grid:
    return Grid(WKT, TRANSFORM, height, width, tile_size=tile, scale=scale)


# ----------------------------------------------------------------------------- blending weights
def test_hann_ramps_are_positive_and_complementary() -> None:
    for length in (1, 2, 7, 16, 33):
        ramp = hann_ramp(length).astype(np.float64)
        assert ramp.shape == (length,)
        assert (ramp > 0).all() and (ramp < 1).all()
        assert np.all(np.diff(ramp) > 0)
        np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-6)


def test_axis_profiles_full_weight_at_scene_borders_and_partition_of_unity() -> None:
    size, starts = 64, [0, 48, 96, 136]  # the last window is shifted back (overlap 24)
    profiles = axis_profiles(starts, size)
    assert profiles[0][0] == 1.0 and profiles[136][-1] == 1.0
    total = np.zeros(starts[-1] + size)
    for start, profile in profiles.items():
        assert (profile > 0).all() and (profile <= 1).all()
        total[start : start + size] += profile
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_single_window_scene_has_unit_weights() -> None:
    grid = Grid(WKT, TRANSFORM, 40, 50, tile_size=64, scale=8)
    windows = grid.sliding_windows(64, 16)
    rows, cols = blend_profiles(windows, 64)
    assert len(windows) == 1
    assert (rows[0] == 1).all() and (cols[0] == 1).all()


# ----------------------------------------------------------------------------- the streaming core
@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_constant_predictor_gives_constant_output(batch_size: int) -> None:
    grid = odd_grid()
    reader = ArrayScene(grid, smooth_field(grid.height, grid.width))

    def constant(aux: np.ndarray, coarse: np.ndarray, allowed: object = None) -> np.ndarray:
        return np.full((aux.shape[0], 1, 64, 64), 3.25, dtype=np.float32)

    out, stats, chunks = run_scene(
        constant, reader, overlap=16, batch_size=batch_size, conserve_mass=False
    )
    assert out.shape == (grid.height, grid.width)
    np.testing.assert_allclose(out, 3.25, rtol=1e-6)  # last row and column included
    assert stats.windows == len(grid.sliding_windows(64, 16))
    assert sum(chunks) == grid.height
    assert all(c % grid.scale == 0 for c in chunks[:-1])


@pytest.mark.parametrize("chunk_columns", [2048, 40])
def test_block_sums_equal_the_coarse_input_after_blending(
    chunk_columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mosaic, "_EMIT_COLUMNS", chunk_columns)
    grid = odd_grid()
    truth = smooth_field(grid.height, grid.width)
    hole = np.zeros_like(truth, dtype=bool)
    hole[50:53, 100:140] = True  # aux nodata inside cells that keep other valid pixels
    hole[120:136, 16:32] = True  # two whole coarse cells without a valid pixel
    reader = ArrayScene(grid, truth, aux_nodata=hole)
    rng = np.random.default_rng(0)

    def noisy(aux: np.ndarray, coarse: np.ndarray, allowed: object = None) -> np.ndarray:
        return rng.uniform(0.0, 5.0, size=(aux.shape[0], 64, 64)).astype(np.float32)

    out, stats, _ = run_scene(noisy, reader, overlap=16, batch_size=5)
    assert np.array_equal(np.isnan(out), hole)
    s = grid.scale
    rows, cols = grid.padded_shape
    padded = np.full((rows, cols), np.nan, dtype=np.float32)
    padded[: grid.height, : grid.width] = out
    coarse = coarse_from_fine(np.pad(truth, ((0, rows - grid.height), (0, cols - grid.width))), s)
    sums = np.nansum(padded.reshape(rows // s, s, cols // s, s), axis=(1, 3), dtype=np.float64)
    has_valid = np.isfinite(padded).reshape(rows // s, s, cols // s, s).any(axis=(1, 3))
    checked = has_valid & (coarse > 0)
    rel = np.abs(sums[checked] - coarse[checked]) / coarse[checked]
    assert rel.max() < 1e-4
    assert stats.worst_cell_rel_error == pytest.approx(rel.max(), abs=1e-6)
    lost = coarse[(coarse > 0) & ~has_valid].sum()
    assert lost > 0 and stats.unplaced_mass == pytest.approx(lost, rel=1e-6)
    assert stats.valid_pixels == int((~hole).sum())


def test_no_seams_with_hann_blending_but_seams_with_last_writer() -> None:
    grid, size, overlap = odd_grid(), 64, 16
    truth = smooth_field(grid.height, grid.width)
    reader = ArrayScene(grid, truth)
    index = np.arange(size)
    edge_distance = np.minimum(index, size - 1 - index)
    edge = np.exp(-np.minimum.outer(edge_distance, edge_distance) / 4.0).astype(np.float32)

    def inconsistent(seed: int) -> mosaic.Predictor:
        """The truth plus a per-window random bias that is strongest at the window's edges."""
        rng = np.random.default_rng(seed)

        def predict(aux: np.ndarray, coarse: np.ndarray, allowed: object = None) -> np.ndarray:
            n = aux.shape[0]
            amplitude = rng.normal(0.0, 0.5, (n, 1, 1)).astype(np.float32)
            offset = rng.normal(0.0, 0.05, (n, 1, 1)).astype(np.float32)
            return aux[:, 0, 1] + amplitude * edge + offset

        return predict

    windows = grid.sliding_windows(size, overlap)
    border = np.zeros((grid.height, grid.width), dtype=bool)  # within 2 px of an interior edge
    for w in windows:
        for line in (w.col, w.col + size):
            if 0 < line < grid.width:
                border[:, max(line - 2, 0) : line + 2] = True
        for line in (w.row, w.row + size):
            if 0 < line < grid.height:
                border[max(line - 2, 0) : line + 2, :] = True
    inner = np.zeros_like(border)
    inner[8:-8, 8:-8] = True  # scene-border edges have no neighbour to blend with

    blended, _, _ = run_scene(inconsistent(1), reader, overlap=overlap, conserve_mass=False)
    error = np.abs(blended - truth)
    assert error[border & inner].mean() <= 1.1 * error[~border & inner].mean()

    predict = inconsistent(1)
    last_writer = np.full(reader.truth.shape, np.nan, dtype=np.float32)
    for window in windows:
        last_writer[window.slices()] = predict(*_inputs(reader, window))[0]
    error_lw = np.abs(last_writer[: grid.height, : grid.width] - truth)
    assert error_lw[border & inner].mean() > 1.5 * error_lw[~border & inner].mean()
    assert error_lw[border & inner].mean() > 2.0 * error[border & inner].mean()


def _inputs(reader: ArrayScene, window: Window) -> tuple[np.ndarray, np.ndarray]:
    batch = reader([window])
    return batch.aux, batch.coarse


def test_strip_memory_is_flat_in_scene_height(monkeypatch: pytest.MonkeyPatch) -> None:
    grid = odd_grid(height=1000, width=100, tile=64, scale=8)
    reader = ArrayScene(grid, smooth_field(grid.height, grid.width))
    heights: list[int] = []

    class RecordingStrip(mosaic._Strip):
        def pop(self, bottom: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            heights.append(self.weighted.shape[0])
            return super().pop(bottom)

    monkeypatch.setattr(mosaic, "_Strip", RecordingStrip)
    out, _, _ = run_scene(lambda a, c, m: a[:, 0, 1], reader, overlap=16, batch_size=1)
    assert out.shape == (1000, 100)
    assert len(heights) > 15
    assert max(heights) <= 64 + 48  # one window plus one stride, however tall the scene


def test_coarse_from_fine_nan_is_zero_and_all_nan_cell_is_nodata() -> None:
    fine = np.array([[1.0, np.nan, np.nan, np.nan], [2.0, 3.0, np.nan, np.nan]], np.float32)
    np.testing.assert_array_equal(coarse_from_fine(fine, 2), [[6.0, np.nan]])


# ----------------------------------------------------------------------------- whole runs
YEARS = (2020, 2021)
BANDS = ("ntl", "pop")


def build_run(
    root: Path,
    *,
    height: int = 72,
    width: int = 100,
    tile: int = 32,
    scale: int = 8,
    has_coarse: bool = False,
    bands: Sequence[str] = BANDS,
    water: bool = False,
) -> PipelineConfig:
    """Write tile cubes, index.json and an untrained tiny checkpoint; return the config.

    With ``water``, band 0 is a water mask (1 on columns 40-63 but 61, declared a zero class).
    """
    raw: dict = {
        "workdir": "run",
        "years": list(YEARS),
        "grid": {"tile_size": tile, "scale": scale},
        "target": {"path": "co2_{year}.tif", "units": UNITS},
        "aux": [{"name": name, "path": f"{name}_{{year}}.tif"} for name in BANDS],
        "mosaic": {"overlap": 8, "batch_size": 4},
    }
    if has_coarse:
        raw["coarse"] = {"path": "coarse_{year}.tif"}
    if water:
        raw["aux"][0] |= {"kind": "categorical", "zero_classes": [1]}
    config = parse_config(raw, root)
    grid = Grid(WKT, TRANSFORM, height, width, tile_size=tile, scale=scale)
    rows, cols = grid.padded_shape
    tiles_dir = config.tiles_dir
    tiles = TilesLayout(tiles_dir)
    tiles_dir.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for year in YEARS:
        aux = np.full((len(BANDS), rows, cols), np.nan, dtype=np.float32)
        aux[:, :height, :width] = rng.uniform(0, 3, (len(BANDS), height, width))
        aux[1, 20:23, 30:50] = np.nan  # one band missing: imputed, not nodata
        aux[:, 48:64, 8:24] = np.nan  # whole cells without any aux
        if water:
            aux[0, :height, :width] = 0.0
            aux[0, :height, 40:64] = 1.0
            aux[0, :height, 61] = 0.0  # the cells of columns 56-63 keep one land column
        target = np.full((1, rows, cols), np.nan, dtype=np.float32)
        target[0, :height, :width] = rng.gamma(2.0, 5.0, (height, width))
        target[0, :16, :16] = np.nan  # target nodata: four coarse cells are nodata
        np.save(tiles.cube("X", year), cut_tiles(aux, grid, tile))
        np.save(tiles.cube("Y", year), cut_tiles(target, grid, tile))
        if has_coarse:
            product = coarse_from_fine(target, scale) * 1.5 + 1.0
            np.save(tiles.cube("C", year), cut_tiles(product, grid, tile // scale))
    kinds = {a.name: a.kind for a in config.aux}
    index = TileIndex(
        grid=grid,
        years=list(YEARS),
        bands=list(bands),
        aux=[{"name": b, "kind": kinds.get(b, "intensive"), "transform": "none"} for b in bands],
        target={"units": UNITS, "kind": "extensive"},
        has_coarse=has_coarse,
        tiles=[TileRecord(t.id, t.row, t.col, {}) for t in grid.tiles()],
    )
    write_index(tiles_dir, index)
    save_tiny_checkpoint(config, bands, scale, tile)
    return config


def cut_tiles(scene: np.ndarray, grid: Grid, size: int) -> np.ndarray:
    return np.stack(
        [
            scene[:, r * size : (r + 1) * size, c * size : (c + 1) * size]
            for r in range(grid.tile_rows)
            for c in range(grid.tile_cols)
        ]
    )


def save_tiny_checkpoint(
    config: PipelineConfig, bands: Sequence[str], scale: int, tile: int
) -> Path:
    torch.manual_seed(0)
    model = DSTCarbonFormer(len(bands), scale, dim=8, depth=1, value_scale=10.0)
    norm = Normalization(
        aux_mean=(1.5,) * len(bands),
        aux_std=(0.9,) * len(bands),
        value_scale=10.0,
        high_threshold=20.0,
        hotspot_threshold=40.0,
    )
    path = config.checkpoints_dir / "best.pt"
    checkpoint = Checkpoint.for_inference(model, norm, config, bands=bands, tile_size=tile)
    save_checkpoint(path, checkpoint)
    return path


def scene_of(config: PipelineConfig, kind: str, year: int) -> np.ndarray:
    """Reassemble a cube into its padded scene ``[C, rows, cols]``."""
    index = load_index(config.tiles_dir)
    cube = np.load(TilesLayout(config.tiles_dir).cube(kind, year))  # type: ignore[arg-type]
    grid, size = index.grid, cube.shape[-1]
    out = np.empty((cube.shape[1], grid.tile_rows * size, grid.tile_cols * size), np.float32)
    for i, tile in enumerate(cube):
        r, c = divmod(i, grid.tile_cols)
        out[:, r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
    return out


def block_rel_errors(pred: np.ndarray, coarse: np.ndarray, scale: int) -> np.ndarray:
    rows, cols = coarse.shape[0] * scale, coarse.shape[1] * scale
    padded = np.full((rows, cols), np.nan)
    padded[: pred.shape[0], : pred.shape[1]] = pred
    blocks = padded.reshape(rows // scale, scale, cols // scale, scale)
    sums = np.nansum(blocks, axis=(1, 3))
    checked = np.isfinite(blocks).any(axis=(1, 3)) & (coarse > 0)
    return np.abs(sums[checked] - coarse[checked]) / coarse[checked]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[PipelineConfig, list[MosaicResult]]:
    config = build_run(tmp_path_factory.mktemp("finished"))
    results = mosaic_years(config, [2020, 2021], device="cpu", progress=False)
    return config, results


def test_outputs_lie_exactly_on_the_grid_and_are_valid_cogs(
    finished: tuple[PipelineConfig, list[MosaicResult]],
) -> None:
    config, results = finished
    assert [r.year for r in results] == [2020, 2021]
    for result in results:
        assert not result.skipped
        assert result.tif_path == config.predictions_dir / f"Pred_{result.year}.tif"
        ok, errors, _ = validate_cog(result.tif_path)
        assert ok, errors
        with rasterio.open(result.tif_path) as src:
            assert src.crs == CRS.from_wkt(WKT)
            assert src.transform == TRANSFORM
            assert (src.height, src.width) == (72, 100)
            assert src.dtypes == ("float32",) and math.isnan(src.nodata)
            assert src.profile["tiled"] and src.compression.name.lower() in ("deflate", "zstd")
            tags = src.tags()
            assert tags["units"] == UNITS and tags["year"] == str(result.year)
            assert tags["config_hash"] == config.data_hash()
            assert tags["carbongeo_version"] == __version__
            assert len(tags["model_id"]) == 16
            assert src.descriptions == (f"CO2 emissions {UNITS}",)
            assert src.units == (UNITS,)
    with rasterio.open(results[0].tif_path) as src:
        assert src.tags()["input_years"] == "2020,2020,2021"  # the edge year is replicated
    assert listing(config.predictions_dir) == [
        "Pred_2020.json",  # the STAC items and catalog
        "Pred_2020.npy",
        "Pred_2020.tif",
        "Pred_2021.json",
        "Pred_2021.npy",
        "Pred_2021.tif",
        "catalog.json",
    ]


def test_npy_equals_tif_band_including_nodata(
    finished: tuple[PipelineConfig, list[MosaicResult]],
) -> None:
    _, results = finished
    for result in results:
        array = np.load(result.npy_path)
        with rasterio.open(result.tif_path) as src:
            band = src.read(1)
        assert array.dtype == np.float32 and array.shape == (72, 100)
        assert np.array_equal(array, band, equal_nan=True)
        assert np.array_equal(np.isnan(array), np.isnan(band))


def test_mass_is_conserved_and_nodata_is_propagated(
    finished: tuple[PipelineConfig, list[MosaicResult]],
) -> None:
    config, results = finished
    for result in results:
        pred = np.load(result.npy_path)
        target = scene_of(config, "Y", result.year)[0]
        aux = scene_of(config, "X", result.year)[:, :72, :100]
        coarse = coarse_from_fine(target, 8)
        expected_nodata = ~np.isfinite(aux).any(axis=0)
        expected_nodata |= np.repeat(np.repeat(np.isnan(coarse), 8, 0), 8, 1)[:72, :100]
        assert np.array_equal(np.isnan(pred), expected_nodata)
        assert np.nanmin(pred) >= 0
        assert block_rel_errors(pred, coarse, 8).max() < 1e-4
        assert result.worst_cell_rel_error is not None and result.worst_cell_rel_error < 1e-4
        assert result.unplaced_mass == pytest.approx(np.nansum(target[48:64, 8:24]), rel=1e-5)
        assert result.megapixels_per_s is not None and result.megapixels_per_s > 0


def test_real_coarse_product_is_the_constraint(tmp_path: Path) -> None:
    config = build_run(tmp_path, has_coarse=True, height=40, width=56)
    (result,) = mosaic_years(config, [2021], device="cpu", progress=False)
    pred = np.load(result.npy_path)
    product = scene_of(config, "C", 2021)[0]
    assert block_rel_errors(pred, product, 8).max() < 1e-4
    target_coarse = coarse_from_fine(scene_of(config, "Y", 2021)[0], 8)
    assert block_rel_errors(pred, target_coarse, 8).max() > 0.1  # not the target's sums


def test_rerun_skips_finished_years_and_overwrite_recomputes(tmp_path: Path) -> None:
    config = build_run(tmp_path, height=40, width=40)
    (first,) = mosaic_years(config, [2020], device="cpu", progress=False)
    stamp = first.tif_path.stat().st_mtime_ns, first.npy_path.stat().st_mtime_ns
    time.sleep(0.01)
    again = mosaic_years(config, [2020, 2021], device="cpu", progress=False)
    assert [r.skipped for r in again] == [True, False]
    assert (first.tif_path.stat().st_mtime_ns, first.npy_path.stat().st_mtime_ns) == stamp
    (redone,) = mosaic_years(config, [2020], device="cpu", progress=False, overwrite=True)
    assert not redone.skipped and redone.tif_path.stat().st_mtime_ns != stamp[0]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_year_leaves_no_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    config = build_run(tmp_path)
    real = mosaic.torch_predictor

    def failing(model: torch.nn.Module, device: torch.device | str = "cpu") -> mosaic.Predictor:
        predict = real(model, device)
        calls = {"n": 0}

        def flaky(aux: np.ndarray, coarse: np.ndarray, allowed: object = None) -> np.ndarray:
            calls["n"] += 1
            if calls["n"] == 3:  # mid-scene: rows were already written
                raise error
            return predict(aux, coarse, allowed)

        return flaky

    monkeypatch.setattr(mosaic, "torch_predictor", failing)
    with pytest.raises(type(error)):
        mosaic_years(config, [2020], device="cpu", progress=False, batch_size=2)
    assert listing(config.predictions_dir) == []


def test_failed_overwrite_keeps_the_previous_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_run(tmp_path, height=40, width=40)
    (first,) = mosaic_years(config, [2021], device="cpu", progress=False)
    before = first.tif_path.read_bytes(), first.npy_path.read_bytes()

    def broken(model: torch.nn.Module, device: torch.device | str = "cpu") -> mosaic.Predictor:
        def predict(aux: np.ndarray, coarse: np.ndarray, allowed: object = None) -> np.ndarray:
            raise RuntimeError("boom")

        return predict

    monkeypatch.setattr(mosaic, "torch_predictor", broken)
    with pytest.raises(RuntimeError):
        mosaic_years(config, [2021], device="cpu", progress=False, overwrite=True)
    assert (first.tif_path.read_bytes(), first.npy_path.read_bytes()) == before
    assert listing(config.predictions_dir) == [
        "Pred_2021.json",
        "Pred_2021.npy",
        "Pred_2021.tif",
        "catalog.json",
    ]


def test_missing_cube_names_the_tile_command(tmp_path: Path) -> None:
    config = build_run(tmp_path, height=40, width=40)
    TilesLayout(config.tiles_dir).cube("X", 2021).unlink()
    with pytest.raises(CarbongeoError, match=r"carbongeo tile --year 2021"):
        mosaic_years(config, [2020], device="cpu", progress=False)  # 2021 is an input year
    with pytest.raises(CarbongeoError, match=r"carbongeo tile --year 2019"):
        mosaic_years(config, [2019], device="cpu", progress=False)
    assert listing(config.predictions_dir) == []


def test_incompatible_checkpoint_is_one_line_error(tmp_path: Path) -> None:
    config = build_run(tmp_path, height=40, width=40)
    other = save_tiny_checkpoint(config, ["ntl", "water"], 8, 32)
    with pytest.raises(CheckpointError, match="bands") as info:
        mosaic_years(config, [2020], checkpoint=other, device="cpu", progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        mosaic_years(config, [2020], checkpoint=tmp_path / "nope.pt", progress=False)


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = build_run(tmp_path, height=40, width=40)
    mosaic_years(config, [2020], device="cpu", progress=True)
    captured = capsys.readouterr()
    assert "mosaic 2020" in captured.err and captured.out == ""


def test_dask_cluster_gives_byte_identical_outputs(tmp_path: Path) -> None:
    local = build_run(tmp_path / "local")
    remote = build_run(tmp_path / "remote")
    mosaic_years(local, list(YEARS), device="cpu", progress=False)
    results = mosaic_years(remote, list(YEARS), device="cpu", progress=False, workers=2)
    assert [r.year for r in results] == list(YEARS)
    for year in YEARS:
        for suffix in ("tif", "npy"):
            a = local.predictions_dir / f"Pred_{year}.{suffix}"
            b = remote.predictions_dir / f"Pred_{year}.{suffix}"
            assert a.read_bytes() == b.read_bytes(), f"Pred_{year}.{suffix} differs"


def test_zero_classes_get_no_mass_from_the_network_and_the_forest(tmp_path: Path) -> None:
    config = build_run(tmp_path, water=True, has_coarse=True, height=40, width=72)
    product = scene_of(config, "C", 2021)[0]
    for method in ("model", "learned-dasymetric"):
        (result,) = mosaic_years(
            config, [2021], device="cpu", progress=False, overwrite=True, method=method
        )
        pred = np.load(result.npy_path)
        water = np.zeros(pred.shape, dtype=bool)
        water[:, 40:64] = True
        water[:, 61] = False
        # Columns 40-55 are whole water cells: they keep their mass (counted); 56-63 are not.
        assert np.all(pred[:, 56:64][water[:, 56:64]] == 0.0), method
        assert block_rel_errors(pred, product, 8).max() < 1e-4, method
        whole = product[:, 5:7]
        assert result.mass_on_masked == pytest.approx(float(whole[whole > 0].sum()), rel=1e-5)
        with rasterio.open(result.tif_path) as src:
            tags = src.tags()
        assert tags["method"] == method
        assert float(tags["mass_on_masked"]) == pytest.approx(result.mass_on_masked, rel=1e-5)


def test_learned_dasymetric_needs_no_checkpoint_and_refuses_one(tmp_path: Path) -> None:
    config = build_run(tmp_path, has_coarse=True, height=40, width=56)
    (config.checkpoints_dir / "best.pt").unlink()
    (result,) = mosaic_years(
        config, [2021], device="cpu", progress=False, method="learned-dasymetric"
    )
    assert validate_cog(result.tif_path)[0]
    with rasterio.open(result.tif_path) as src:
        tags = src.tags()
        assert src.nodata is not None and np.isnan(src.nodata)
        assert src.crs == CRS.from_wkt(WKT)
    assert tags["method"] == "learned-dasymetric" and "forest" in tags and "checkpoint" not in tags
    assert (
        block_rel_errors(np.load(result.npy_path), scene_of(config, "C", 2021)[0], 8).max() < 1e-4
    )
    # Same inputs, same forest: the finished year is kept without fitting again.
    (again,) = mosaic_years(
        config, [2021], device="cpu", progress=False, method="learned-dasymetric"
    )
    assert again.skipped
    with pytest.raises(CarbongeoError, match="only read by method model"):
        mosaic_years(config, [2021], checkpoint=tmp_path / "x.pt", method="learned-dasymetric")
    with pytest.raises(CarbongeoError, match="not one of"):
        mosaic_years(config, [2021], method="boosting")
