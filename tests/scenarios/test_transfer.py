"""Transfer: a model trained on one world predicts another region it never saw."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio

from carbongeo.config import load_config
from carbongeo.errors import CheckpointError
from carbongeo.stages.evaluate import evaluate
from carbongeo.stages.mosaic import mosaic_years
from carbongeo.stages.split import split_tiles
from carbongeo.stages.tile import tile_years
from carbongeo.stages.train import train
from carbongeo.store.checkpoint import load_checkpoint, save_checkpoint
from carbongeo.synth import generate_world

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained_a(world: Path) -> Path:
    """World A (the module's tiny world) tiled, split and trained one epoch: its best.pt."""
    config = load_config(world / "carbongeo.toml")
    tile_years(config, config.years, progress=False)
    split_tiles(config)
    train(config, epochs=1, device="cpu", resume=False, progress=False)
    return config.layout.best_checkpoint


def test_a_checkpoint_predicts_another_world_with_its_own_normalisation(
    trained_a: Path, tmp_path: Path
) -> None:
    config_b = load_config(generate_world(tmp_path / "b", seed=5, size="tiny"))
    tile_years(config_b, config_b.years, progress=False)
    assert not config_b.layout.best_checkpoint.exists()  # B is never trained
    results = mosaic_years(
        config_b, config_b.years[-1:], checkpoint=trained_a, device="cpu", progress=False
    )
    (result,) = results
    assert result.worst_cell_rel_error < 1e-4
    with rasterio.open(result.tif_path) as src:
        assert src.tags()["checkpoint"] == "best.pt" and src.tags()["method"] == "model"
    pred = np.load(result.npy_path)
    assert np.isfinite(pred).any() and np.nanmin(pred) >= 0

    # Evaluated on B with the checkpoint that made the maps: the model is in the Wald tables too.
    split_tiles(config_b)
    report = evaluate(config_b, years=config_b.years[-1:], checkpoint=trained_a, progress=False)
    assert report.model.startswith("model: fine supervision")
    wald = [s for s in report.sections if s.level == "coarse"]
    assert wald and all("model" in s.metrics for s in wald)
    without = evaluate(config_b, years=config_b.years[-1:], progress=False)
    assert all("model" not in s.metrics for s in without.sections if s.level == "coarse")

    # Another checkpoint did not make these maps: one line naming both models.
    state = load_checkpoint(trained_a)
    weights = {k: v + 1.0 if v.is_floating_point() else v for k, v in state.weights.items()}
    other = tmp_path / "other.pt"
    save_checkpoint(other, dataclasses.replace(state, weights=weights))
    with pytest.raises(CheckpointError, match="was made by another model") as info:
        evaluate(config_b, years=config_b.years[-1:], checkpoint=other, progress=False)
    assert "\n" not in str(info.value)


def test_a_band_that_differs_is_one_line_naming_it(trained_a: Path, tmp_path: Path) -> None:
    path = generate_world(tmp_path / "c", seed=6, size="tiny")
    text = path.read_text()
    # ndvi gets a transform the checkpoint was not trained with.
    text = text.replace(
        'name = "ndvi"\npath = "aux/ndvi_{year}.tif"\nkind = "intensive"\ntransform = "none"',
        'name = "ndvi"\npath = "aux/ndvi_{year}.tif"\nkind = "intensive"\ntransform = "log1p"',
    )
    path.write_text(text)
    config = load_config(path)
    assert config.aux[config.aux_names.index("ndvi")].transform == "log1p"
    tile_years(config, config.years[-1:], progress=False)
    with pytest.raises(CheckpointError, match="aux band 'ndvi': transform is 'log1p'") as info:
        mosaic_years(config, config.years[-1:], checkpoint=trained_a, device="cpu", progress=False)
    assert "\n" not in str(info.value)
