"""Terrain and water: the coast, elevation, forest, rivers and lakes of the world."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from carbongeo.ops.blocks import block_sum
from carbongeo.synth import streams
from carbongeo.synth.fields import block_mean, fbm, upsample
from carbongeo.synth.grids import SUB, WORK_RES, WorldGrids, around, cells
from carbongeo.synth.lines import meander, sample_line
from carbongeo.synth.sizes import SynthSize


@dataclass(frozen=True)
class Terrain:
    """The physical ground of the world; the working grid unless the name ends in `_km`.

    Attributes:
        water: Sea, rivers and lakes (bool).
        elevation: Height above sea level (m); 0 at sea, flat over each lake.
        texture: Standardised small-scale noise of the ground (shapes lakes, bare land, NDVI).
        forest: Where the ground is high or hilly enough for forest (bool).
        water_distance_km: Distance from each 1 km cell to the nearest cell with water (km).
        elevation_km: Mean elevation of each 1 km cell (m).
    """

    water: np.ndarray
    elevation: np.ndarray
    texture: np.ndarray
    forest: np.ndarray
    water_distance_km: np.ndarray
    elevation_km: np.ndarray


def build_terrain(
    seed: int, spec: SynthSize, grids: WorldGrids, xs: np.ndarray, ys: np.ndarray
) -> Terrain:
    """The terrain of the world made from `seed`.

    Terrain is shaped on the 1 km grid and interpolated onto the working grid (cell centres
    `xs`, `ys`); the sea lies towards the east-south-east.
    """
    coarse_shape = (grids.work.height // SUB, grids.work.width // SUB)
    rng = streams.rng(seed, streams.TERRAIN)
    coast_noise = fbm(rng, coarse_shape, 3.2)
    relief = fbm(rng, coarse_shape, 3.0)
    hills = fbm(rng, coarse_shape, 2.4)
    texture_km = fbm(rng, coarse_shape, 2.0)

    # u runs from about -1 inland to +1 offshore.
    left, bottom, right, top = grids.target.bounds
    xc, yc = (left + right) / 2.0, (bottom + top) / 2.0
    half_diagonal = math.hypot(right - left, top - bottom) / 2.0
    theta = math.radians(-35.0 + rng.uniform(-20.0, 20.0))
    xs_km, ys_km = xs.reshape(-1, SUB).mean(axis=1), ys.reshape(-1, SUB).mean(axis=1)
    u = (
        (xs_km[None, :] - xc) * math.cos(theta) + (ys_km[:, None] - yc) * math.sin(theta)
    ) / half_diagonal
    offshore = u - (0.5 + 0.1 * coast_noise)
    inland_km = np.clip(-offshore / 1.3, 0.0, 1.0)
    relief_km = (
        4.0
        + 1500.0 * inland_km**1.6 * (0.45 + 0.55 / (1.0 + np.exp(-1.5 * relief)))
        + 90.0 * inland_km * hills
        + 6.0 * texture_km
    )
    sea = upsample(offshore) > 0.0
    elevation = np.maximum(upsample(relief_km), 1.0)
    texture = upsample(texture_km)
    forest = upsample(relief_km - 140.0 * hills) > 220.0

    water_rng = streams.rng(seed, streams.WATER)
    rivers = _rivers(water_rng, spec, grids, xs_km, ys_km, u)
    lakes = _lakes(water_rng, spec, grids, xs, ys, inland_km, texture, elevation, sea | rivers)
    water = sea | rivers | lakes
    elevation[sea] = 0.0

    water_km = block_sum(water.astype(np.float32), SUB) > 0
    return Terrain(
        water=water,
        elevation=elevation,
        texture=texture,
        forest=forest,
        water_distance_km=ndimage.distance_transform_edt(~water_km),
        elevation_km=block_mean(elevation, SUB),  # with the lakes' flat surfaces
    )


def _rivers(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: WorldGrids,
    xs_km: np.ndarray,
    ys_km: np.ndarray,
    u: np.ndarray,
) -> np.ndarray:
    """Meandering rivers from the inland part of the target area to the sea, widening downstream.

    `u` is the 1 km coast coordinate (larger offshore) at centres `xs_km`, `ys_km`.
    """
    work = grids.work
    mask = np.zeros((work.height, work.width), dtype=bool)
    r_lo, c_lo = grids.row0 // SUB, grids.col0 // SUB
    u_target = u[r_lo : r_lo + grids.target.height, c_lo : c_lo + grids.target.width]
    inland_rows, inland_cols = np.nonzero(u_target < np.quantile(u_target, 0.15))
    sea_rows, sea_cols = np.nonzero(u > 0.75)
    if inland_rows.size == 0 or sea_rows.size == 0:
        return mask
    for _ in range(spec.n_rivers):
        i = rng.integers(inland_rows.size)
        j = rng.integers(sea_rows.size)
        start = np.array([xs_km[c_lo + inland_cols[i]], ys_km[r_lo + inland_rows[i]]])
        end = np.array([xs_km[sea_cols[j]], ys_km[sea_rows[j]]])
        line = meander(rng, start, end, levels=7, roughness=0.18)
        x, y, _ = sample_line(line, 100.0)
        flat, inside = cells(work, x, y)
        downstream = np.linspace(0.0, 1.0, x.size)
        half_width = 60.0 + 500.0 * downstream**1.5
        flat, half_width = flat[inside], half_width[inside]
        if flat.size == 0:
            continue
        rows, cols = np.divmod(flat, work.width)
        pad = 4
        r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, work.height)
        c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, work.width)
        centre = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        width_at = np.zeros((r1 - r0, c1 - c0), dtype=np.float64)
        centre[rows - r0, cols - c0] = True
        np.maximum.at(width_at, (rows - r0, cols - c0), half_width)
        distance, (near_r, near_c) = ndimage.distance_transform_edt(~centre, return_indices=True)
        reach = np.maximum(width_at[near_r, near_c], WORK_RES / 2.0)
        mask[r0:r1, c0:c1] |= distance * WORK_RES <= reach
    return mask


def _lakes(
    rng: np.random.Generator,
    spec: SynthSize,
    grids: WorldGrids,
    xs: np.ndarray,
    ys: np.ndarray,
    inland_km: np.ndarray,
    texture: np.ndarray,
    elevation: np.ndarray,
    water: np.ndarray,
) -> np.ndarray:
    """Irregular elliptical lakes on low inland ground; their surface is flat.

    `inland_km` (0 at the coast, 1 far inland) is on the 1 km grid; the rest on the working grid.
    `elevation` is flattened in place over each lake.
    """
    mask = np.zeros(water.shape, dtype=bool)
    left, bottom, right, top = grids.target.bounds
    placed = 0
    for _ in range(200 * spec.n_lakes):
        if placed == spec.n_lakes:
            break
        x = rng.uniform(left + 10_000.0, right - 10_000.0)
        y = rng.uniform(bottom + 10_000.0, top - 10_000.0)
        r = int((ys[0] + WORK_RES / 2.0 - y) // WORK_RES)
        c = int((x - xs[0] + WORK_RES / 2.0) // WORK_RES)
        if water[r, c] or not 0.1 < inland_km[r // SUB, c // SUB] < 0.6:
            continue
        semi_major = rng.uniform(1.5, 5.0)
        semi_minor = semi_major * rng.uniform(0.4, 0.9)
        angle = rng.uniform(0.0, math.pi)
        win = around(xs, ys, x, y, 1.6 * semi_major * 1000.0)
        if win is None:
            continue
        rows, cols, dx, dy = win
        along = dx * math.cos(angle) + dy * math.sin(angle)
        across = -dx * math.sin(angle) + dy * math.cos(angle)
        radius = np.sqrt((along / semi_major) ** 2 + (across / semi_minor) ** 2)
        lake = radius < 1.0 + 0.25 * texture[rows, cols]
        mask[rows, cols] |= lake
        elevation[rows, cols][lake] = elevation[r, c]
        placed += 1
    return mask
