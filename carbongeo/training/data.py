"""The training dataset: T-year windows of tile cubes with the coarse degradation built in.

A sample is one tile in one centre year ``y``. Its inputs are the aux bands of years
``y - r .. y + r`` (``r = temporal // 2``) and the coarse field of the same years, which is the fine
target summed over ``scale x scale`` blocks in linear units. Its label is the fine target of the
centre year. The model input therefore never holds the target at full resolution.

Years beyond the ends of the series replicate the nearest end year, and a neighbour year without a
target (``target.years``) the centre year; a year inside the series whose cubes are missing is an
error that names the command to fix it.

:class:`ProductDataset` is the same for coarse supervision: it never opens a target cube, its
label is the real coarse product and its coarse field that product (the training loop aggregates
it further by ``k`` before the model sees it). Cubes are memory-mapped and opened
lazily in each process (DataLoader workers included), never loaded whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from carbongeo.errors import (
    CheckpointError,
    ParameterError,
)
from carbongeo.ops.blocks import block_sum
from carbongeo.ops.domain import allowed_pixels, aux_domain
from carbongeo.store.tiles import check_cubes, load_index, open_aux_target, open_year

if TYPE_CHECKING:
    from carbongeo.training.normalization import Normalization


def window_years(year: int, temporal: int, first: int, last: int) -> list[int]:
    """The ``temporal`` years centred on ``year``, clamped to the series ``first .. last``.

    Years before ``first`` or after ``last`` replicate the end year, so the window always has
    ``temporal`` entries and its centre is ``year``.
    """
    if temporal < 1 or temporal % 2 == 0:
        raise ParameterError(f"must be an odd number of years, got {temporal}", param="temporal")
    radius = temporal // 2
    return [min(max(year + k, first), last) for k in range(-radius, radius + 1)]


class CubeDataset(Dataset[dict[str, Any]]):
    """(tile, centre year) samples over memory-mapped tile cubes.

    Each item is a dict:

    * ``aux``: float32 ``[C, T, H, W]``, normalised, nodata set to 0;
    * ``coarse``: float32 ``[1, T, H/s, W/s]``, the target summed over ``s x s`` blocks per year in
      physical units (nodata counts as 0);
    * ``target``: float32 ``[1, H, W]``, the centre year's target, nodata set to 0;
    * ``mask``: bool ``[1, H, W]``, True where the centre year's target and all its aux bands are
      finite;
    * ``allowed``: bool ``[1, H, W]``, only with ``zero_classes``: False on the centre year's hard
      zero-emission pixels (see :func:`carbongeo.ops.domain.allowed_pixels`);
    * ``tile_id`` and ``year``: ints.

    An item may be addressed by ``index`` or by ``(index, epoch)``; the epoch only changes the
    random augmentation, which is a pure function of ``(seed, epoch, index)`` so that it is the same
    with any number of workers and after a resume.

    Args:
        tiles_dir: Folder with ``index.json`` and the ``X_<year>.npy`` / ``Y_<year>.npy`` cubes.
        tile_ids: Ids of the tiles to use.
        years: Centre years to use.
        norm: Normalisation statistics of the training split.
        temporal: Years per window (odd).
        augment: Apply random flips and 90-degree rotations, the same to every stream.
        seed: Seed of the augmentation.
        series: First and last year of the whole series (window ends replicate them); by default
            the first and last of ``years``.
        zero_classes: Class values per categorical band on which no emissions can be.

    Raises:
        InputDataError: If the index is missing or a tile id is unknown.
        MissingRunFileError: If the cubes of a needed year are missing.
        CheckpointError: If the aux bands differ from the normalisation.
    """

    def __init__(
        self,
        tiles_dir: str | Path,
        tile_ids: list[int],
        years: list[int],
        norm: Normalization,
        *,
        temporal: int = 3,
        augment: bool = False,
        seed: int = 0,
        series: tuple[int, int] | None = None,
        zero_classes: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.tiles_dir = Path(tiles_dir)
        self.index = load_index(self.tiles_dir)
        self.norm = norm
        self.temporal = temporal
        self.augment = augment
        self.seed = seed
        self.scale = self.index.scale
        self.zero_classes = dict(zero_classes or {})
        if len(self.index.bands) != norm.n_bands:
            raise CheckpointError(
                f"the tiles have {len(self.index.bands)} aux bands but the normalisation has "
                f"{norm.n_bands}; they come from different configurations"
            )
        years = sorted(int(y) for y in years)
        if series is None:
            series = (years[0], years[-1]) if years else (0, 0)
        first, last = series
        self.windows = {y: self._window(y, first, last) for y in years}
        needed = {w for window in self.windows.values() for w in window}
        self._check(needed)
        self.samples = [
            (int(tile_id), self.index.position(int(tile_id)), year)
            for tile_id in tile_ids
            for year in years
        ]
        self._cubes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._pid = os.getpid()
        self._forest_values: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _window(self, year: int, first: int, last: int) -> list[int]:
        window = window_years(year, self.temporal, first, last)
        # A neighbour without a target has no coarse field here (it is the target summed).
        return [w if self.index.has_target(w) else year for w in window]

    def _check(self, years: set[int]) -> None:
        check_cubes(self.tiles_dir, self.index, years, target=True, coarse=False)

    def _open(self, year: int) -> tuple[np.ndarray, np.ndarray]:
        return open_aux_target(self.tiles_dir, self.index, year)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cubes"] = {}  # memory maps are reopened in the receiving process
        return state

    def _cube(self, year: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pid != os.getpid():  # a forked worker: do not share the parent's file handles
            self._cubes = {}
            self._pid = os.getpid()
        if year not in self._cubes:
            self._cubes[year] = self._open(year)
        return self._cubes[year]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), 0)
        return self._item(index, epoch, self.augment)

    def plain_item(self, index: int) -> dict[str, Any]:
        """Sample ``index`` without augmentation (and without cached forest values)."""
        return self._item(index, 0, augment=False, forest=False)

    def set_forest_values(self, values: np.ndarray | None) -> None:
        """Cache the forest prior's values ``[N, H, W]`` of every sample (un-augmented, in sample
        order); items then carry them as ``forest``, transformed with the sample."""
        if values is not None and values.shape[0] != len(self.samples):
            raise ValueError(f"expected forest values of {len(self.samples)} samples")
        self._forest_values = values

    def _item(self, index: int, epoch: int, augment: bool, forest: bool = True) -> dict[str, Any]:
        tile_id, row, year = self.samples[index]
        window = self.windows[year]
        aux = np.stack([self._cube(w)[0][row] for w in window], axis=1)  # [C, T, H, W]
        target = np.stack([self._cube(w)[1][row, 0] for w in window], axis=0)[None]  # [1,T,H,W]
        aux = aux.astype(np.float32, copy=False)
        target = target.astype(np.float32, copy=False)
        extra = []
        if forest and self._forest_values is not None:
            extra.append(self._forest_values[index][None])
        if augment:
            aux, target, *extra = self._augment([aux, target, *extra], index, epoch)
        centre = self.temporal // 2
        coarse = block_sum(target, self.scale, nodata_as_zero=True).astype(np.float32)
        fine = target[:, centre]
        finite = np.isfinite(fine)
        mask = finite & aux_domain(aux[:, centre])[None]
        item = {
            "aux": torch.from_numpy(self.norm.normalize_aux(aux)),
            "coarse": torch.from_numpy(coarse),
            "target": torch.from_numpy(np.where(finite, fine, np.float32(0.0))),
            "mask": torch.from_numpy(mask),
            "tile_id": tile_id,
            "year": year,
        }
        if extra:
            item["forest"] = torch.from_numpy(np.ascontiguousarray(extra[0], dtype=np.float32))
        return item | self._allowed(aux[:, centre])

    def _allowed(self, aux: np.ndarray) -> dict[str, Tensor]:
        """``{"allowed": [1, H, W]}`` of the centre year, or nothing without zero classes."""
        allowed = allowed_pixels(aux, self.index.bands, self.zero_classes)
        if allowed is None:
            return {}
        return {"allowed": torch.from_numpy(np.ascontiguousarray(allowed[None]))}

    def _augment(self, arrays: list[np.ndarray], index: int, epoch: int) -> list[np.ndarray]:
        """Apply one random flip / rot90 of the dihedral group to every fine array (the same)."""
        rng = np.random.default_rng([self.seed, epoch, index])
        square = arrays[0].shape[-1] == arrays[0].shape[-2]
        turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        flip = bool(rng.integers(2))
        out = []
        for array in arrays:
            array = np.rot90(array, turns, axes=(-2, -1))
            if flip:
                array = array[..., ::-1]
            out.append(np.ascontiguousarray(array))
        # The coarse field is computed afterwards from the transformed target, so it stays the
        # exact block sum of what the model sees.
        return out


class ProductDataset(CubeDataset):
    """(tile, centre year) samples for coarse supervision: the coarse product is the label.

    The target cube is never opened. Each item is a dict:

    * ``aux``: float32 ``[C, T, H, W]``, normalised, nodata set to 0 (as :class:`CubeDataset`);
    * ``coarse``: float32 ``[1, T, H/s, W/s]``, the real coarse product of the window's years
      (nodata counts as 0); the loop aggregates it by ``k`` for the model's input;
    * ``target``: float32 ``[1, H/s, W/s]``, the centre year's product, nodata set to 0;
    * ``mask``: bool ``[1, H/s, W/s]``, True on the cells whose product is finite and whose
      ``s x s`` pixels all have aux data;
    * ``allowed``: as in :class:`CubeDataset`, only with ``zero_classes``;
    * ``tile_id`` and ``year``: ints.

    Arguments and augmentation are those of :class:`CubeDataset`.
    """

    def _window(self, year: int, first: int, last: int) -> list[int]:
        return window_years(year, self.temporal, first, last)

    def _check(self, years: set[int]) -> None:
        check_cubes(self.tiles_dir, self.index, years, target=False, coarse=True)

    def _open(self, year: int) -> tuple[np.ndarray, np.ndarray]:
        cubes = open_year(self.tiles_dir, self.index, year, target=False, coarse=True)
        assert cubes.coarse is not None  # open_year raises when the product is missing
        return cubes.aux, cubes.coarse

    def _item(self, index: int, epoch: int, augment: bool, forest: bool = True) -> dict[str, Any]:
        tile_id, row, year = self.samples[index]
        window = self.windows[year]
        aux = np.stack([self._cube(w)[0][row] for w in window], axis=1)  # [C, T, H, W]
        product = np.stack([self._cube(w)[1][row, 0] for w in window], axis=0)[None]
        aux = aux.astype(np.float32, copy=False)
        product = product.astype(np.float32, copy=False)
        if augment:  # rotations and flips commute with the block structure
            aux, product = self._augment([aux, product], index, epoch)
        centre = self.temporal // 2
        cell = product[:, centre]
        covered = block_sum(aux_domain(aux[:, centre]).astype(np.float32), self.scale)
        mask = np.isfinite(cell) & (covered == self.scale * self.scale)[None]
        return {
            "aux": torch.from_numpy(self.norm.normalize_aux(aux)),
            "coarse": torch.from_numpy(np.nan_to_num(product, nan=0.0, posinf=0.0, neginf=0.0)),
            "target": torch.from_numpy(np.where(np.isfinite(cell), cell, np.float32(0.0))),
            "mask": torch.from_numpy(mask),
            "tile_id": tile_id,
            "year": year,
            **self._allowed(aux[:, centre]),
        }


def model_inputs(batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """The model's inputs of a batch: ``(aux, coarse)`` on ``device`` (never the fine target)."""
    non_blocking = device.type == "cuda"
    return (
        batch["aux"].to(device, non_blocking=non_blocking),
        batch["coarse"].to(device, non_blocking=non_blocking),
    )


def model_forest_values(batch: dict[str, Any], device: torch.device) -> Tensor | None:
    """The batch's cached forest prior values, or None (the model then computes them)."""
    values = batch.get("forest")
    return None if values is None else values.to(device, non_blocking=device.type == "cuda")


def model_allowed(batch: dict[str, Any], device: torch.device) -> Tensor | None:
    """The batch's hard zero-emission mask for the mass constraint, or None without one."""
    allowed = batch.get("allowed")
    return None if allowed is None else allowed.to(device, non_blocking=device.type == "cuda")
