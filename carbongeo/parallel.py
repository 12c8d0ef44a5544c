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
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, ParamSpec, TypeVar

import dask
from dask.callbacks import Callback
from dask.delayed import Delayed
from tqdm import tqdm

from carbongeo.errors import CarbongeoError, ClusterError, ParameterError

P = ParamSpec("P")
R = TypeVar("R")

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


def check_scheduler(scheduler: str | None) -> None:
    """Refuse a ``scheduler`` that is neither a local scheduler name nor a dask address.

    Raises:
        ClusterError: One line naming ``scheduler`` and what it accepts.
    """
    if scheduler is None or scheduler in (*LOCAL_SCHEDULERS, "distributed"):
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        protocol, location = parse_address(scheduler)
        if protocol in ("tcp", "tls", "ws", "wss", "ucx"):
            parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise ClusterError(
            f"cannot connect to the dask scheduler at {scheduler!r}: not an address ({err}); "
            "give e.g. "
            f"tcp://HOST:8786, or one of {', '.join((*LOCAL_SCHEDULERS, 'distributed'))}",
            param="scheduler",
        ) from None


def check_options(scheduler: str | None, workers: int | None) -> None:
    """Check ``scheduler`` and ``workers`` before any work starts (one line each).

    Raises:
        ParameterError: A bad scheduler address or a negative worker count.
    """
    check_scheduler(scheduler)
    worker_count(workers)


def picklable_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Make a task's CarbongeoError reach the submitting process as itself.

    dask.distributed sends a task's exception back pickled with its causes; a cause such as a
    GDAL error does not unpickle, and the user then got ``Exception: InputDataError(...)`` with a
    traceback instead of one line. The error is raised again without its causes.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except CarbongeoError as err:
            error = err
        raise _bare_copy(error)  # outside the handler: no cause, no context

    return wrapper


def _bare_copy(error: CarbongeoError) -> CarbongeoError:
    import copy

    clone = copy.copy(error)
    clone.__cause__ = None
    clone.__context__ = None
    clone.__traceback__ = None
    return clone


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
    check_scheduler(scheduler)
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
    from distributed import Client

    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_distributed())
        if scheduler is None or scheduler == "distributed":
            client = stack.enter_context(_local_client(count, timeout_s))
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
def _local_client(count: int, timeout_s: float) -> Iterator[Any]:
    """A client of a local cluster of ``count`` single-threaded worker processes.

    The workers are started under :func:`silent_workers`, with a Ctrl-C meanwhile deferred until
    the cluster is up (an interrupted start leaves a half-built cluster that dask closes, loudly,
    only at exit); the client and the cluster are closed when the block ends, and a Ctrl-C then
    surfaces as :class:`KeyboardInterrupt` (one line and exit status 130 in the CLI).
    """
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        with silent_workers(), _deferred_interrupt() as interrupted:
            try:
                cluster = LocalCluster(
                    n_workers=count,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    # No dashboard; the scheduler's small HTTP server (health checks) takes a
                    # free local port instead of 8787, which another cluster may hold (that warns).
                    scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                )
            except Exception:
                if interrupted:  # the workers died of the same Ctrl-C
                    raise KeyboardInterrupt from None
                raise
            stack.callback(cluster.close)
            client = Client(cluster, timeout=timeout_s)
            stack.callback(client.close)
        if interrupted:
            raise KeyboardInterrupt
        yield client


@contextlib.contextmanager
def silent_workers() -> Iterator[None]:
    """Start worker processes in the block: nothing they print reaches the terminal.

    A terminal sends Ctrl-C to the whole process group, so the workers are interrupted with this
    process, while they start or compute, and each prints a traceback; they also log their own
    chatter. Processes spawned in the block inherit a standard error that goes nowhere (this
    process's own is restored when the block ends) and a dask logging level of ``critical``.
    Their failures still reach this process through the futures. With carbongeo logging at INFO
    nothing is hidden.
    """
    if logging.getLogger("carbongeo").getEffectiveLevel() <= logging.INFO:
        yield
        return
    with _environment({_WORKER_LOG_LEVEL: "critical"}):
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[list[bool]]:
    """Record a Ctrl-C in the block instead of raising it; yields a list that is then non-empty."""
    seen: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append(True))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def quiet_distributed() -> Iterator[None]:
    """Only critical messages from dask.distributed during the block (warnings too with INFO)."""
    logger = logging.getLogger("distributed")
    level = logger.level
    verbose = logging.getLogger("carbongeo").getEffectiveLevel() <= logging.INFO
    logger.setLevel(max(level, logging.WARNING if verbose else logging.CRITICAL))
    try:
        yield
    finally:
        logger.setLevel(level)


# dask reads its configuration from DASK_* variables when a worker process imports it.
_WORKER_LOG_LEVEL = "DASK_LOGGING__DISTRIBUTED"


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
