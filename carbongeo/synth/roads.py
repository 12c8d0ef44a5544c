"""The road network: where the roads run and the traffic emissions they carry each year."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from carbongeo.synth.cities import City, PointSource
from carbongeo.synth.grids import WorldGrids, cells
from carbongeo.synth.lines import meander, sample_line
from carbongeo.synth.timeline import emission_trend

# Roads are sampled every 25 m; each sample stands for that length of road.
_STEP_M = 25.0


@dataclass(frozen=True)
class RoadNetwork:
    """Roads as samples along their lines.

    Attributes:
        cells: Flat working-cell index of every road sample.
        weights: t CO2 per year of every sample in the reference year.
        edges: Edge index of every sample.
        edge_ends: ``[n_edges, 2]`` city indices of each edge's ends; -1 for a point source.
    """

    cells: np.ndarray
    weights: np.ndarray
    edges: np.ndarray
    edge_ends: np.ndarray

    def length_km(self, shape: tuple[int, int]) -> np.ndarray:
        """Km of road per working cell (float32) on a working grid of `shape`."""
        count = np.bincount(self.cells, minlength=shape[0] * shape[1]).astype(np.float32)
        return (count * (_STEP_M / 1000.0)).reshape(shape)

    def emission(self, cities: Sequence[City], year: int, shape: tuple[int, int]) -> np.ndarray:
        """Traffic emissions of `year` per working cell (t CO2, float64).

        Traffic grows with the cities a road links; access roads of plants follow the trend.
        """
        # The trailing 1.0 is picked by the -1 end of plant access roads.
        growth = np.array([c.population_in(year) / c.population for c in cities] + [1.0])
        ends = self.edge_ends
        edge_factor = np.sqrt(growth[ends[:, 0]] * growth[ends[:, 1]]) * emission_trend(year)
        return np.bincount(
            self.cells,
            weights=self.weights * edge_factor[self.edges],
            minlength=shape[0] * shape[1],
        ).reshape(shape)


def road_presence(length_km: np.ndarray) -> np.ndarray:
    """How much of a working cell a road marks: 1 from one full crossing (250 m) of road."""
    return np.minimum(length_km / 0.25, 1.0)


def build_roads(
    rng: np.random.Generator,
    grids: WorldGrids,
    cities: Sequence[City],
    points: Sequence[PointSource],
) -> RoadNetwork:
    """Road network: a spanning tree of the cities plus links to near neighbours, and an access
    road from every point source to its nearest city. Traffic follows a gravity model."""
    edges: set[tuple[int, int]] = set()
    n = len(cities)
    if n > 1:
        xy = np.array([[c.x, c.y] for c in cities])
        dist = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
        in_tree = [0]
        best = dist[0].copy()
        parent = np.zeros(n, dtype=np.int64)
        best[0] = np.inf
        for _ in range(n - 1):
            nxt = int(np.argmin(np.where(np.isin(np.arange(n), in_tree), np.inf, best)))
            edges.add((min(nxt, int(parent[nxt])), max(nxt, int(parent[nxt]))))
            in_tree.append(nxt)
            closer = dist[nxt] < best
            best = np.where(closer, dist[nxt], best)
            parent = np.where(closer, nxt, parent)
        for i in range(n):
            for j in np.argsort(dist[i])[1:3]:
                if dist[i, j] < 120_000.0:
                    edges.add((min(i, int(j)), max(i, int(j))))
    links: list[tuple[np.ndarray, np.ndarray, float, int, int]] = []
    for a, b in sorted(edges):
        ca, cb = cities[a], cities[b]
        rate = float(np.clip(2500.0 * math.sqrt(ca.population * cb.population) / 1e6, 150, 6000))
        links.append((np.array([ca.x, ca.y]), np.array([cb.x, cb.y]), rate, a, b))
    for point in points:
        if not cities:
            break
        nearest = min(
            range(n), key=lambda i: math.hypot(cities[i].x - point.x, cities[i].y - point.y)
        )
        city = cities[nearest]
        links.append((np.array([point.x, point.y]), np.array([city.x, city.y]), 60.0, -1, nearest))

    flat_cells, weights, edge_ids, ends = [], [], [], []
    for edge, (start, end, rate, a, b) in enumerate(links):
        line = meander(rng, start, end, levels=4, roughness=0.1)
        x, y, spacing = sample_line(line, _STEP_M)
        flat, inside = cells(grids.work, x, y)
        flat_cells.append(flat[inside])
        weights.append(np.full(int(inside.sum()), rate * spacing / 1000.0))
        edge_ids.append(np.full(int(inside.sum()), edge, dtype=np.int64))
        ends.append((a, b))
    if not flat_cells:
        empty = np.zeros(0, dtype=np.int64)
        return RoadNetwork(empty, np.zeros(0), empty, np.zeros((0, 2), dtype=np.int64))
    return RoadNetwork(
        cells=np.concatenate(flat_cells),
        weights=np.concatenate(weights),
        edges=np.concatenate(edge_ids),
        edge_ends=np.array(ends, dtype=np.int64),
    )
