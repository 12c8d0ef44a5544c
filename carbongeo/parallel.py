"""Run a stage's independent dask tasks: the one runner of ``tile`` and ``mosaic``.

Where the tasks run is chosen by two values, the same in every stage:

* ``scheduler`` None and ``workers`` None: dask's threaded scheduler, one thread per CPU;
* a local scheduler name (``threads``, ``synchronous`` for debugging, ``processes``): that
  scheduler with ``workers`` threads or processes;
* ``distributed``, or None with ``workers`` given: a local ``dask.distributed`` cluster of
  ``workers`` single-threaded processes;
* anything else: the address of a running scheduler (``tcp://host:8786``), whose workers must
  see the same files; ``workers`` is then the cluster's business and ignored.

``workers`` 0 means one per CPU, like None; a negative count is an error.

Whatever the scheduler, results come back in task order, a task's exception comes back as itself
(a :class:`~carbongeo.errors.CarbongeoError` raised in a worker keeps its class and message),
and failures of the cluster itself (a bad or unreachable address, a lost connection, workers
that died) become one :class:`~carbongeo.errors.ClusterError`. A distributed run connects with
the same timeout, starts no dashboard and keeps dask.distributed's INFO chatter out of the log;
the progress bar advances once per finished task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import dask
from dask.callbacks import Callback
from dask.delayed import Delayed
from tqdm import tqdm

from carbongeo.errors import ClusterError, ParameterError

LOCAL_SCHEDULERS: tuple[str, ...] = (
    "threads",
    "synchronous",
    "sync",
    "single-threaded",
    "processes",
)
"""Scheduler names that run in this process (threads) or its children (processes)."""
CONNECT_TIMEOUT_S = 30.0
"""Seconds to wait for a dask scheduler to answer."""


def worker_count(workers: int | None) -> int:
    """The number of workers a run uses: ``workers``, or one per CPU for None or 0.

    Raises:
        ParameterError: ``workers`` is negative.
    """
    if workers is not None and workers < 0:
        raise ParameterError(f"must be >= 0 (0: one per CPU), got {workers}", param="workers")
    return workers or os.cpu_count() or 1


def run_tasks(
    tasks: Sequence[Delayed],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "tasks",
    unit: str = "task",
    timeout_s: float = CONNECT_TIMEOUT_S,
) -> list[Any]:
    """Compute independent delayed tasks where ``scheduler`` and ``workers`` say (module doc).

    Args:
        tasks: The tasks; each is computed once.
        scheduler: None, a local scheduler name, ``"distributed"`` or a scheduler address.
        workers: Threads, processes or local-cluster workers; None or 0: one per CPU.
        progress: Show a bar over finished tasks on stderr.
        desc: Label of the bar.
        unit: What one task is, for the bar.
        timeout_s: Seconds to wait for a scheduler address to answer.

    Returns:
        The task results, in the order of ``tasks``.

    Raises:
        ParameterError: ``workers`` is negative.
        ClusterError: The scheduler address is malformed or does not answer, the connection was
            lost, or the workers died while running a task.
        Exception: Whatever a task raised, unchanged.
    """
    count = worker_count(workers)
    local_threads = scheduler is None and workers is None
    with tqdm(total=len(tasks), desc=desc, unit=unit, file=sys.stderr, disable=not progress) as bar:
        if local_threads or scheduler in LOCAL_SCHEDULERS:
            keys = {task.key for task in tasks}
            with _TaskProgress(bar, keys):
                # num_workers None is dask's own one-per-CPU pool.
                results = dask.compute(
                    *tasks, scheduler=scheduler or "threads", num_workers=workers or None
                )
            return list(results)
        return _run_distributed(tasks, scheduler, count, bar, timeout_s)


class _TaskProgress(Callback):
    """Advance a bar when one of the given tasks finishes under a local dask scheduler."""

    def __init__(self, bar: tqdm, keys: set[Any]) -> None:
        super().__init__()
        self._bar = bar
        self._keys = keys

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in self._keys:
            self._bar.update(1)


def _run_distributed(
    tasks: Sequence[Delayed], scheduler: str | None, count: int, bar: tqdm, timeout_s: float
) -> list[Any]:
    # Importing distributed sets up its logging: import it before quieting it.
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_distributed())
        if scheduler is None or scheduler == "distributed":
            cluster = LocalCluster(
                n_workers=count,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # No dashboard; the scheduler's small HTTP server (health checks) takes a free
                # local port instead of 8787, which another cluster may hold (that warns).
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
            stack.callback(cluster.close)
            client = Client(cluster, timeout=timeout_s)
            where = "the local dask cluster"
        else:
            _probe(scheduler, timeout_s)
            try:
                client = Client(scheduler, timeout=timeout_s)
            except (OSError, ValueError) as err:
                raise _unreachable(scheduler, err) from err
            where = f"the dask scheduler at {scheduler!r}"
        stack.callback(client.close)
        return _gather(client, tasks, bar, where)


def _probe(address: str, timeout_s: float) -> None:
    """Connect once to ``address``, so a bad or silent address fails fast with one line.

    A failed ``Client(address)`` leaves a half-started client whose finaliser prints tracebacks
    at exit; a bare connection leaves nothing behind. It runs in its own thread and event loop,
    so it also works where a loop is already running (a notebook).
    """
    from distributed.comm import connect

    async def attempt() -> None:
        comm = await connect(address, timeout=timeout_s)
        await comm.close()

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, attempt()).result()
    except (OSError, ValueError) as err:
        raise _unreachable(address, err) from err


def _unreachable(address: str, err: Exception) -> ClusterError:
    reason = (str(err) or type(err).__name__).strip().splitlines()[0]
    return ClusterError(
        f"cannot connect to the dask scheduler at {address!r} ({reason}); check the address "
        "and that the scheduler is running",
        param="scheduler",
    )


def _gather(client: Any, tasks: Sequence[Delayed], bar: tqdm, where: str) -> list[Any]:
    """Submit the tasks, advance the bar as they finish, and return their results in order."""
    futures = client.compute(list(tasks))
    try:
        failed = _wait(futures, bar, where)
        if failed is not None:
            _raise_failure(failed, where)
        try:
            return list(client.gather(futures))
        except OSError as err:
            raise _lost(where, err) from err
    except BaseException:
        with contextlib.suppress(OSError):
            client.cancel(futures)
        raise


def _wait(futures: list[Any], bar: tqdm, where: str) -> Any | None:
    """Advance the bar as the futures finish; return the first that did not succeed, or None."""
    from distributed import as_completed

    try:
        for future in as_completed(futures):
            if future.status != "finished":
                return future
            bar.update(1)
    except OSError as err:  # only the connection: task errors are read from their future
        raise _lost(where, err) from err
    return None


def _lost(where: str, err: OSError) -> ClusterError:
    return ClusterError(f"lost the connection to {where} ({err})")


def _raise_failure(future: Any, where: str) -> NoReturn:
    """Raise what made ``future`` fail: its task's own exception, or a ClusterError."""
    from distributed import KilledWorker

    if future.status == "error":
        try:
            future.result()  # raises the task's exception, class and message intact
        except KilledWorker as err:
            raise ClusterError(
                f"the workers of {where} died while running task {err.task!r} (out of memory? "
                "see the worker logs)"
            ) from err
    raise ClusterError(
        f"{where} cancelled task {future.key!r} (the scheduler stopped or the connection dropped)"
    )


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep dask.distributed's INFO chatter (workers starting, ...) out of the user's log."""
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)
