"""The dask runner of tile and mosaic: schedulers, task order, progress and error mapping."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

from carbongeo.config import parse_config
from carbongeo.errors import ClusterError, ConfigError, InputDataError, ParameterError
from carbongeo.parallel import run_tasks, worker_count


def _square(x: int) -> int:
    return x * x


def _fail(x: int) -> int:
    if x == 2:
        raise InputDataError("broken raster", param="aux[1].path")
    return x


def _tasks(func=_square, n: int = 5) -> list:
    return [dask.delayed(func, pure=False)(i) for i in range(n)]


@pytest.mark.parametrize("scheduler", ["threads", "synchronous", "sync", "processes"])
def test_local_schedulers_return_results_in_task_order(scheduler: str) -> None:
    assert run_tasks(_tasks(), scheduler=scheduler, workers=2) == [0, 1, 4, 9, 16]


def test_default_is_threads_on_every_cpu() -> None:
    assert run_tasks(_tasks()) == [0, 1, 4, 9, 16]
    assert run_tasks([]) == []


def test_progress_bar_counts_the_given_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    # Each task depends on an argument task; only the given tasks advance the bar.
    inputs = [dask.delayed(_square, pure=False)(i) for i in range(3)]
    tasks = [dask.delayed(_square, pure=False)(x) for x in inputs]
    assert run_tasks(tasks, scheduler="synchronous", progress=True, desc="demo", unit="part") == [
        0,
        1,
        16,
    ]
    err = capsys.readouterr().err
    assert "demo" in err and "3/3" in err and "part" in err


def test_local_task_error_comes_back_as_itself() -> None:
    with pytest.raises(InputDataError) as info:
        run_tasks(_tasks(_fail), scheduler="threads")
    assert info.value.param == "aux[1].path"
    assert str(info.value) == "aux[1].path: broken raster"


@pytest.mark.parametrize("workers", [None, 0, 3])
def test_worker_count(workers: int | None) -> None:
    assert worker_count(workers) >= 1
    if workers:
        assert worker_count(workers) == workers
    assert worker_count(0) == worker_count(None)


def test_negative_workers_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="must be >= 0") as info:
        run_tasks(_tasks(), workers=-1)
    assert info.value.param == "workers"


@pytest.mark.parametrize("address", ["nonsense", "foo://host:1", "127.0.0.1:notaport"])
def test_malformed_address_is_one_cluster_error(address: str) -> None:
    with pytest.raises(ClusterError, match="cannot connect to the dask scheduler") as info:
        run_tasks(_tasks(), scheduler=address)
    assert info.value.param == "scheduler"
    assert "\n" not in str(info.value)


def test_silent_address_fails_after_the_timeout() -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never accepted
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ClusterError, match=f"127.0.0.1:{port}") as info:
            run_tasks(_tasks(), scheduler=f"tcp://127.0.0.1:{port}", timeout_s=1)
    assert info.value.param == "scheduler"


@pytest.fixture(scope="module")
def scheduler_address() -> Iterator[str]:
    """A small local cluster of 2 single-threaded worker processes."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def test_cluster_returns_results_in_task_order(
    scheduler_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = _tasks(n=6)
    assert run_tasks(tasks, scheduler=scheduler_address, progress=True, desc="blocks") == [
        0,
        1,
        4,
        9,
        16,
        25,
    ]
    assert "6/6" in capsys.readouterr().err


def test_worker_error_comes_back_as_itself(scheduler_address: str) -> None:
    with pytest.raises(InputDataError) as info:
        run_tasks(_tasks(_fail), scheduler=scheduler_address)
    assert type(info.value) is InputDataError
    assert info.value.param == "aux[1].path" and info.value.message == "broken raster"


def test_local_cluster_keeps_distributed_chatter_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("distributed")
    caplog.set_level(logging.INFO)
    assert run_tasks(_tasks(n=3), workers=2) == [0, 1, 4]  # a local cluster of 2 processes
    chatter = [r for r in caplog.records if r.name.startswith("distributed")]
    assert [r for r in chatter if r.levelno < logging.WARNING] == []


def test_tile_and_mosaic_share_the_workers_rule(tmp_path: Path) -> None:
    """-1 is refused before any work by both; 0 (one per CPU) is accepted by both."""
    from carbongeo.stages.mosaic import mosaic_years
    from carbongeo.stages.tile import tile_years

    config = parse_config(
        {
            "years": "2014-2015",
            "target": {"path": "co2_{year}.tif"},
            "aux": [{"name": "ntl", "path": "ntl_{year}.tif"}],
        },
        tmp_path,
    )
    for stage in (tile_years, mosaic_years):
        with pytest.raises(ParameterError, match="workers: must be >= 0"):
            stage(config, [2014], workers=-1, progress=False)
    # With 0 both get past the check and stop on the missing inputs instead.
    with pytest.raises(ConfigError, match="co2_2014.tif"):
        tile_years(config, [2014], workers=0, progress=False)
    with pytest.raises(InputDataError, match="carbongeo tile"):
        mosaic_years(config, [2014], workers=0, progress=False)
