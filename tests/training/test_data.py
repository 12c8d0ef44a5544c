"""Tests of carbongeo.training.data: windows, coarse degradation, masks, augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from _cubes import SCALE, TILE, YEARS, write_cubes
from torch.utils.data import DataLoader

from carbongeo.errors import CarbongeoError
from carbongeo.ops.blocks import block_sum
from carbongeo.training.data import CubeDataset, window_years
from carbongeo.training.normalization import Normalization, compute_normalization


@pytest.fixture()
def cubes(tmp_path: Path) -> tuple[Path, list[int], Normalization]:
    ids = write_cubes(tmp_path, n_tiles=4)
    norm = compute_normalization(tmp_path, ids, YEARS, high_quantile=0.9)
    return tmp_path, ids, norm


def _raw(tiles_dir: Path, prefix: str, year: int, row: int) -> np.ndarray:
    return np.load(tiles_dir / f"{prefix}_{year}.npy")[row]


def test_window_years_replicate_the_ends() -> None:
    assert window_years(2018, 3, 2018, 2020) == [2018, 2018, 2019]
    assert window_years(2019, 3, 2018, 2020) == [2018, 2019, 2020]
    assert window_years(2020, 3, 2018, 2020) == [2019, 2020, 2020]
    assert window_years(2020, 1, 2018, 2020) == [2020]
    with pytest.raises(CarbongeoError, match="odd"):
        window_years(2020, 2, 2018, 2020)


def test_item_content(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    data = CubeDataset(tiles_dir, ids, list(YEARS), norm)
    assert len(data) == len(ids) * len(YEARS)
    item = data[1]  # tile ids[0] (row 0, with target nodata), centre year 2019
    assert (item["tile_id"], item["year"]) == (ids[0], 2019)
    c, t, h, w = len(norm.aux_mean), 3, TILE, TILE
    assert item["aux"].shape == (c, t, h, w) and item["aux"].dtype == torch.float32
    assert item["coarse"].shape == (1, t, h // SCALE, w // SCALE)
    assert item["target"].shape == (1, h, w) and item["mask"].dtype == torch.bool
    for k, year in enumerate(YEARS):
        expected = block_sum(_raw(tiles_dir, "Y", year, 0), SCALE, nodata_as_zero=True)
        np.testing.assert_allclose(item["coarse"][:, k].numpy(), expected, rtol=1e-6)
        aux = norm.normalize_aux(_raw(tiles_dir, "X", year, 0))
        np.testing.assert_array_equal(item["aux"][:, k].numpy(), aux)
    target = _raw(tiles_dir, "Y", 2019, 0)
    np.testing.assert_array_equal(item["mask"].numpy(), np.isfinite(target))
    np.testing.assert_array_equal(item["target"].numpy(), np.nan_to_num(target))
    assert torch.isfinite(item["aux"]).all() and torch.isfinite(item["coarse"]).all()


def test_mask_excludes_pixels_without_any_aux(
    cubes: tuple[Path, list[int], Normalization],
) -> None:
    tiles_dir, ids, norm = cubes
    # The fixture leaves band 1 missing on [10:12, 20:24]; band 0 is also removed on two pixels.
    x = np.load(tiles_dir / "X_2020.npy", mmap_mode="r+")
    x[1, 0, 10, 20:22] = np.nan
    x.flush()
    del x
    item = CubeDataset(tiles_dir, [ids[1]], [2020], norm)[0]
    assert not item["mask"][0, 10, 20:22].any()
    assert int((~item["mask"]).sum()) == 2  # one band missing alone is imputed, not masked
    assert torch.isfinite(item["aux"]).all()


def test_edge_years_replicate(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    data = CubeDataset(tiles_dir, [ids[2]], list(YEARS), norm)
    first, last = data[0], data[2]
    assert torch.equal(first["aux"][:, 0], first["aux"][:, 1])  # 2017 -> 2018
    assert torch.equal(first["coarse"][:, 0], first["coarse"][:, 1])
    assert not torch.equal(first["aux"][:, 1], first["aux"][:, 2])
    assert torch.equal(last["aux"][:, 2], last["aux"][:, 1])  # 2021 -> 2020


def test_missing_year_inside_the_series(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    (tiles_dir / "Y_2019.npy").unlink()
    with pytest.raises(CarbongeoError, match="carbongeo tile --year 2019"):
        CubeDataset(tiles_dir, ids, [2020], norm, series=(2018, 2020))
    # A centre year at the edge of a shorter series does not need 2019.
    CubeDataset(tiles_dir, ids, [2020], norm, series=(2020, 2020))


def test_unknown_tile_and_band_mismatch(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    with pytest.raises(CarbongeoError, match="carbongeo split"):
        CubeDataset(tiles_dir, [999], list(YEARS), norm)
    three = Normalization((0.0,) * 3, (1.0,) * 3, 1.0, 1.0, 1.0)
    with pytest.raises(CarbongeoError, match="3"):
        CubeDataset(tiles_dir, ids, list(YEARS), three)


def test_model_input_never_holds_the_fine_target(
    cubes: tuple[Path, list[int], Normalization],
) -> None:
    """Shuffling the target inside every coarse cell changes the label but not the inputs."""
    tiles_dir, ids, norm = cubes
    before = CubeDataset(tiles_dir, ids, list(YEARS), norm)[4]
    rng = np.random.default_rng(0)
    for year in YEARS:
        cube = np.load(tiles_dir / f"Y_{year}.npy")
        n = cube.shape[0]
        blocks = cube.reshape(n, 1, TILE // SCALE, SCALE, TILE // SCALE, SCALE)
        blocks = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, 1, TILE // SCALE, TILE // SCALE, -1)
        blocks = blocks[..., rng.permutation(SCALE * SCALE)]
        blocks = blocks.reshape(n, 1, TILE // SCALE, TILE // SCALE, SCALE, SCALE)
        cube = blocks.transpose(0, 1, 2, 4, 3, 5).reshape(n, 1, TILE, TILE)
        np.save(tiles_dir / f"Y_{year}.npy", np.ascontiguousarray(cube))
    after = CubeDataset(tiles_dir, ids, list(YEARS), norm)[4]
    assert torch.equal(before["aux"], after["aux"])
    torch.testing.assert_close(before["coarse"], after["coarse"], rtol=1e-6, atol=1e-4)
    assert not torch.equal(before["target"], after["target"])


def test_augmentation_is_consistent(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    plain = CubeDataset(tiles_dir, ids, list(YEARS), norm)
    augmented = CubeDataset(tiles_dir, ids, list(YEARS), norm, augment=True, seed=3)
    changed = 0
    for index in range(len(plain)):
        for epoch in (0, 1):
            item = augmented[(index, epoch)]
            reference = plain[index]
            # Coarse inputs are the block sums of the (transformed) fine years...
            centre = item["coarse"][:, 1]
            target = torch.where(item["mask"], item["target"], 0.0)
            inside = item["mask"].reshape(1, 8, 4, 8, 4).all(dim=(2, 4))
            sums = target.reshape(1, 8, 4, 8, 4).sum(dim=(2, 4))
            torch.testing.assert_close(sums[inside], centre[inside], rtol=1e-5, atol=1e-3)
            # ... and aux band 0 is log1p(target) in this world: the same transform hit both.
            b0 = item["aux"][0, 1] * norm.aux_std[0] + norm.aux_mean[0]
            valid = item["mask"][0]
            torch.testing.assert_close(
                b0[valid], torch.log1p(item["target"][0][valid]), rtol=1e-4, atol=1e-4
            )
            assert int(item["mask"].sum()) == int(reference["mask"].sum())
            assert item["target"].sum() == pytest.approx(float(reference["target"].sum()), 1e-5)
            changed += not torch.equal(item["target"], reference["target"])
    assert changed > 0
    # A pure function of (seed, epoch, index).
    assert torch.equal(augmented[(5, 1)]["aux"], augmented[(5, 1)]["aux"])


def test_cubes_open_lazily_and_pickle_small(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    data = CubeDataset(tiles_dir, ids, list(YEARS), norm)
    assert data._cubes == {}
    data[0]
    assert all(isinstance(x, np.memmap) for pair in data._cubes.values() for x in pair)
    clone = pickle.loads(pickle.dumps(data))
    assert clone._cubes == {}
    assert torch.equal(clone[3]["aux"], data[3]["aux"])


def test_loader_with_workers(cubes: tuple[Path, list[int], Normalization]) -> None:
    tiles_dir, ids, norm = cubes
    data = CubeDataset(tiles_dir, ids, list(YEARS), norm)
    data[0]  # open maps in the parent: workers must reopen their own
    loader = DataLoader(data, batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(len(b["year"]) for b in batches) == len(data)
    assert torch.equal(batches[0]["aux"][1], data[1]["aux"])


def test_dataset_names_the_command_when_the_index_is_missing(tmp_path: Path) -> None:
    norm = Normalization([0.0], [1.0], 1.0, 1.0, 1.0)
    with pytest.raises(CarbongeoError, match="carbongeo tile"):
        CubeDataset(tmp_path, [0], [2020], norm)
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(CarbongeoError, match="damaged"):
        CubeDataset(tmp_path, [0], [2020], norm)


def test_zero_classes_give_an_allowed_mask_that_follows_the_augmentation(tmp_path: Path) -> None:
    ids = write_cubes(tmp_path, n_tiles=2, with_nodata=False)
    for year in YEARS:
        path = tmp_path / f"X_{year}.npy"
        cube = np.load(path)
        cube[:, 1] = 0.0
        cube[:, 1, :, :7] = 1.0  # band b1 is a class band: class 1 on the left columns
        np.save(path, cube)
    norm = compute_normalization(tmp_path, ids, list(YEARS), high_quantile=0.9)
    plain = CubeDataset(tmp_path, ids, list(YEARS), norm)
    assert "allowed" not in plain[0]
    data = CubeDataset(
        tmp_path, ids, list(YEARS), norm, augment=True, seed=1, zero_classes={"b1": (1.0,)}
    )
    for index in range(len(data)):
        item = data[(index, 3)]
        raw_class = item["aux"][1, 1] * norm.aux_std[1] + norm.aux_mean[1]  # centre year
        np.testing.assert_array_equal(item["allowed"][0].numpy(), ~np.isclose(raw_class, 1.0))
        assert item["allowed"].dtype == torch.bool


def test_cached_forest_values_follow_the_augmentation(
    cubes: tuple[Path, list[int], Normalization],
) -> None:
    tiles_dir, ids, norm = cubes
    augmented = CubeDataset(tiles_dir, ids, list(YEARS), norm, augment=True, seed=3)
    # Cache the un-augmented target as the "forest values": it must move with the target.
    values = np.stack([augmented.plain_item(i)["target"][0].numpy() for i in range(len(augmented))])
    augmented.set_forest_values(values)
    for index in range(len(augmented)):
        item = augmented[(index, 1)]
        assert torch.equal(item["forest"], item["target"])
        assert "forest" not in augmented.plain_item(index)
    with pytest.raises(ValueError, match="forest values of"):
        augmented.set_forest_values(values[:1])
