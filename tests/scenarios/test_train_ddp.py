"""Distributed training: two CPU processes (Gloo) behave like torchrun --nproc_per_node 2."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _cubes import YEARS, make_config, make_world

from carbongeo.stages.train import train
from carbongeo.store.checkpoint import load_checkpoint
from carbongeo.store.split import load_split
from carbongeo.training.data import CubeDataset
from carbongeo.training.loop import validate
from carbongeo.training.setup import model_from_checkpoint

WORLD_SIZE = 2


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, root: str, port: int) -> None:
    # What torchrun sets for each process.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)
    config = make_config(Path(root), epochs=2)
    result = train(config, device="cpu", progress=False)
    out = Path(root) / f"result_{rank}.json"
    out.write_text(json.dumps({"best_val_mae": result.best_val_mae, "epochs": result.epochs_run}))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_processes_train_and_agree_with_one(tmp_path: Path) -> None:
    config = make_world(tmp_path, epochs=2)
    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=WORLD_SIZE, join=True)

    results = [json.loads((tmp_path / f"result_{r}.json").read_text()) for r in range(WORLD_SIZE)]
    assert results[0] == results[1]  # every process saw the same all-reduced metrics
    assert results[0]["epochs"] == 2
    written = sorted(p.name for p in config.checkpoints_dir.iterdir())
    assert written == ["best.pt", "latest.pt", "train_log.csv"]  # one writer, no leftovers

    state = load_checkpoint(config.checkpoints_dir / "best.pt")
    assert not any(k.startswith("module.") for k in state.weights)
    model, norm = model_from_checkpoint(state), state.normalization
    split = load_split(config.tiles_dir)
    data = CubeDataset(config.tiles_dir, split.val, list(YEARS), norm)
    loader = torch.utils.data.DataLoader(data, batch_size=5)
    single = validate(model, loader, torch.device("cpu"), norm, 4)
    assert single["mae"] == pytest.approx(results[0]["best_val_mae"], rel=1e-6)
