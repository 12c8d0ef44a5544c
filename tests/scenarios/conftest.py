"""Fixtures the bad-input scenario modules share: one torch thread and a pristine tiny world."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from carbongeo.synth import generate_world


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: tiny models gain nothing from more, and a busy machine loses a lot.

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pristine tiny world (rasters and carbongeo.toml) of a module, never modified."""
    folder = tmp_path_factory.mktemp("world")
    generate_world(folder, seed=0, size="tiny")
    return folder
