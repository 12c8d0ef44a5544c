"""What the dask runners of ``tile`` and ``mosaic`` share: checked options, quiet local clusters.

* :func:`check_scheduler` and :func:`check_workers` refuse a bad ``scheduler`` address or a worker
  count below one with one line, before any work starts.
* :func:`local_client` starts a local cluster whose worker processes print nothing on the
  terminal (:func:`silent_workers`): a terminal sends Ctrl-C to the whole process group, and
  workers interrupted while they start or compute printed pages of tracebacks. This process
  cancels the work, shuts the workers down and prints one line.
* :func:`picklable_errors` lets a task's one-line error reach this process intact.
* :func:`quiet_distributed` keeps dask.distributed's log (workers starting, being killed at
  shutdown) out of the user's stderr unless ``-v`` asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from carbongeo.errors import CarbongeoError, ConfigError

P = ParamSpec("P")
R = TypeVar("R")

LOCAL_SCHEDULERS = ("threads", "synchronous", "sync", "single-threaded", "processes")
"""dask's in-process schedulers, accepted by name; ``distributed`` starts a local cluster."""


def check_scheduler(scheduler: str | None) -> None:
    """Refuse a ``scheduler`` that is neither a local scheduler name nor a dask address.

    Raises:
        ConfigError: One line naming ``scheduler`` and what it accepts.
    """
    if scheduler is None or scheduler in (*LOCAL_SCHEDULERS, "distributed"):
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        protocol, location = parse_address(scheduler)
        if protocol in ("tcp", "tls", "ws", "wss", "ucx"):
            parse_host_port(location)
    except (ValueError, TypeError) as err:
        raise ConfigError(
            f"scheduler: {scheduler!r} is not a dask scheduler address ({err}); give e.g. "
            f"tcp://HOST:8786, or one of {', '.join((*LOCAL_SCHEDULERS, 'distributed'))}"
        ) from None


def check_workers(workers: int | None) -> None:
    """Refuse a worker count below one (leave it out to use every CPU).

    Raises:
        ConfigError: One line naming ``workers``.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers} (leave it out to use every CPU)")


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
        raise type(error)(*error.args)  # outside the handler: no cause, no context

    return wrapper


@contextlib.contextmanager
def silent_workers() -> Iterator[None]:
    """Start worker processes in the block: nothing they print reaches the terminal.

    A terminal sends Ctrl-C to the whole process group, so the workers are interrupted with this
    process, while they start or compute, and each prints a traceback; they also log their own
    chatter. Processes spawned in the block inherit a standard error that goes nowhere (this
    process's own is restored when the block ends) and a dask logging level of ``critical``.
    Their failures still reach this process through the futures. With ``-v`` (carbongeo logging
    at INFO) nothing is hidden.
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
def local_client(workers: int | None, *, dashboard_address: str | None = None) -> Iterator[Any]:
    """A ``dask.distributed`` client of a local cluster of single-threaded worker processes.

    The workers are started under :func:`silent_workers`, with a Ctrl-C meanwhile deferred until
    the cluster is up (an interrupted start leaves a half-built cluster that dask closes, loudly,
    only at exit); the client and the cluster are closed when the block ends.

    Args:
        workers: Worker processes; default: the number of CPUs.
        dashboard_address: Where to serve the dashboard (None: nowhere).
    """
    from distributed import Client, LocalCluster

    with quiet_distributed(), contextlib.ExitStack() as stack:
        with silent_workers(), _deferred_interrupt() as interrupted:
            try:
                cluster = LocalCluster(
                    n_workers=workers or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=dashboard_address,
                )
            except Exception:
                if interrupted:  # the workers died of the same Ctrl-C
                    raise KeyboardInterrupt from None
                raise
            stack.callback(cluster.close)
            client = Client(cluster)
            stack.callback(client.close)
        if interrupted:
            raise KeyboardInterrupt
        yield client


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
    """Only critical messages from dask.distributed during the block, unless -v (INFO) is on."""
    logger = logging.getLogger("distributed")
    level = logger.level
    verbose = logging.getLogger("carbongeo").getEffectiveLevel() <= logging.INFO
    logger.setLevel(level if verbose else max(level, logging.CRITICAL))
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
