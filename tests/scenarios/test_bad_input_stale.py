"""Stale inputs: after an edit of the pipeline file, each stage names the command to rerun.

Before, ``train``, ``mosaic`` and ``evaluate`` used the old cubes silently (and tagged their
outputs with the new config hash). Decisions recorded here:

* The tiles depend on ``[grid]``, ``[target]``, ``[coarse]`` and ``[aux]``; the split on those and
  ``[split]``; the workdir's checkpoint and the predictions on the tile sections and ``[model]``.
* A checkpoint passed explicitly (``--checkpoint``) may come from another configuration or
  region: only its bands, scale and tile size must fit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _scenario import (
    assert_error,
    assert_ok,
    config_of,
    copy_world,
    edit_config,
    files,
    invoke,
    temporaries,
)

pytestmark = pytest.mark.usefixtures("single_thread")

ALL_RUNS = ("tiles", "checkpoints", "predictions")


@pytest.fixture(scope="module")
def trained(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world tiled, split, trained for one epoch and mosaicked (read-only for tests)."""
    site = copy_world(world, tmp_path_factory.mktemp("stale-trained"))
    for args in (["tile"], ["split"], ["train", "--epochs", "1"], ["mosaic"]):
        assert_ok(invoke(*args, "-c", config_of(site)))
    return site


@pytest.fixture
def site(trained: Path, world: Path, tmp_path: Path) -> Path:
    return copy_world(world, tmp_path / "site", *ALL_RUNS, source=trained)


def _swap_aux_paths(site: Path) -> None:
    edit_config(site, 'path = "aux/roads.tif"', 'path = "aux/SWAP"')
    edit_config(site, 'path = "aux/builtup.tif"', 'path = "aux/roads.tif"')
    edit_config(site, 'path = "aux/SWAP"', 'path = "aux/builtup.tif"')


COMMANDS = {
    "split": ["split"],
    "check": ["check"],
    "train": ["train", "--epochs", "2"],
    "mosaic": ["mosaic", "--overwrite"],
    "evaluate": ["evaluate"],
    "preview": ["preview", "--year", "2015"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_swapped_aux_paths_ask_for_tile(command: str, site: Path) -> None:
    _swap_aux_paths(site)
    before = files(site)
    line = assert_error(invoke(*COMMANDS[command], "-c", config_of(site)), "rerun: carbongeo tile")
    assert "[aux]" in line
    assert files(site) == before and temporaries(site) == []


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_edited_split_asks_for_split(command: str, site: Path) -> None:
    edit_config(site, "seed = 0", "seed = 7")
    before = files(site)
    line = assert_error(invoke(*COMMANDS[command], "-c", config_of(site)), "split.json")
    assert "rerun: carbongeo split" in line
    assert files(site) == before


def test_edited_model_asks_for_train_then_mosaic(site: Path) -> None:
    edit_config(site, "dim = 8", "dim = 16")
    config = config_of(site)
    before = files(site)
    line = assert_error(invoke("mosaic", "--overwrite", "-c", config), "best.pt")
    assert "rerun: carbongeo train" in line
    assert_error(invoke("evaluate", "-c", config), "Pred_", "rerun: carbongeo mosaic")
    assert files(site) == before
    # A checkpoint passed explicitly may come from another configuration.
    best = str(site / "runs" / "checkpoints" / "best.pt")
    assert_ok(invoke("mosaic", "--overwrite", "--year", "2015", "--checkpoint", best, "-c", config))


def test_the_named_commands_make_the_inputs_fresh_again(site: Path) -> None:
    _swap_aux_paths(site)
    config = config_of(site)
    for args in (["tile"], ["split"], ["train", "--epochs", "1", "--no-resume"], ["mosaic"]):
        assert_ok(invoke(*args, "-c", config))
    assert_ok(invoke("evaluate", "-c", config))
