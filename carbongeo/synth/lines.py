"""Random polylines (rivers, roads) and points sampled along them."""

from __future__ import annotations

import numpy as np


def meander(
    rng: np.random.Generator, start: np.ndarray, end: np.ndarray, levels: int, roughness: float
) -> np.ndarray:
    """Polyline from start to end bent by recursive random midpoint displacement.

    Args:
        rng: Draws one shift per segment and level.
        start: (x, y) of the first point.
        end: (x, y) of the last point.
        levels: Rounds of midpoint displacement; the line has ``2**levels + 1`` points.
        roughness: Standard deviation of a shift, relative to the segment length.

    Returns:
        Array ``[n, 2]`` of the line's points.
    """
    points = np.array([start, end], dtype=np.float64)
    for _ in range(levels):
        seg = np.diff(points, axis=0)
        length = np.hypot(seg[:, 0], seg[:, 1])
        normal = np.stack([-seg[:, 1], seg[:, 0]], axis=1) / np.maximum(length, 1e-9)[:, None]
        shift = rng.standard_normal(len(seg)) * roughness * length
        mids = (points[1:] + points[:-1]) / 2.0 + normal * shift[:, None]
        merged = np.empty((len(points) + len(mids), 2))
        merged[0::2] = points
        merged[1::2] = mids
        points = merged
    return points


def sample_line(points: np.ndarray, step_m: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Points spaced about step_m along a polyline, and the spacing actually used (m)."""
    seg = np.hypot(*np.diff(points, axis=0).T)
    cumulative = np.concatenate([[0.0], np.cumsum(seg)])
    total = float(cumulative[-1])
    count = max(1, round(total / step_m))
    spacing = total / count
    along = (np.arange(count) + 0.5) * spacing
    x = np.interp(along, cumulative, points[:, 0])
    y = np.interp(along, cumulative, points[:, 1])
    return x, y, spacing
