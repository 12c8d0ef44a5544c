"""The light harness: every measurement runs in a fresh process that reports its peak memory.

The parent starts ``python -m carbongeo.bench _worker KIND PARAMS_JSON``; the worker runs one
:class:`Worker` and prints its result, plus its ``ru_maxrss`` and that of its children, as the
last line of stdout. On Linux a new process starts with the high-water mark of the one that forked
it (even across ``exec``), so this module, and everything the parent imports, must stay light: no
numpy, torch or rasterio. When psutil is installed the parent also samples the RSS of the worker's
whole process tree (dask or DataLoader workers included) every 50 ms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from carbongeo.errors import CarbongeoError, WorkerError

P = TypeVar("P")
R = TypeVar("R")

_ERROR_PREFIX = "carbongeo: error: "


@dataclass(frozen=True)
class Worker(Generic[P, R]):
    """One kind of measurement: its typed parameters, its typed result and the function.

    Attributes:
        kind: Name on the worker's command line.
        params: Dataclass of the parameters (JSON arrays arrive as tuples).
        result: Dataclass of the result.
        run: The measurement; runs in the worker process and may import heavy modules.
    """

    kind: str
    params: type[P]
    result: type[R]
    run: Callable[[P], R]


@dataclass(frozen=True)
class Memory:
    """Peak memory of one worker, in MB.

    Attributes:
        peak_rss_mb: ``ru_maxrss`` of the worker process.
        children_peak_rss_mb: The largest ``ru_maxrss`` of the worker's finished children.
        sampled_rss_mb: psutil-sampled peak RSS of the worker's whole process tree (None
            without psutil).
    """

    peak_rss_mb: float
    children_peak_rss_mb: float
    sampled_rss_mb: float | None


@dataclass(frozen=True)
class Measured(Generic[R]):
    """A worker's result and its peak memory."""

    result: R
    memory: Memory


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """``ru_maxrss`` of this process (``RUSAGE_SELF``) or its children, in MB."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def has_psutil() -> bool:
    """Whether psutil is installed (the process-tree sampling needs it)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def to_json(value: Any) -> str:
    """One line of JSON of a dataclass (or plain value)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.dumps(value)


def from_json(cls: type[P], data: Mapping[str, Any]) -> P:
    """The dataclass ``cls`` from its JSON object; JSON arrays become tuples."""
    return cls(**{key: _tuples(value) for key, value in data.items()})


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _sample_tree(proc: subprocess.Popen[bytes]) -> float | None:
    """Wait for ``proc``; the peak RSS sum of its process tree in MB (None without psutil)."""
    try:
        import psutil
    except ImportError:
        proc.wait()
        return None
    peak = 0
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        proc.wait()
        return None
    while proc.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            members = []
        rss = 0
        for member in members:
            with contextlib.suppress(psutil.Error):
                rss += member.memory_info().rss
        peak = max(peak, rss)
        time.sleep(0.05)
    return peak / 2**20


def run_worker(worker: Worker[P, R], params: P) -> Measured[R]:
    """Run one measurement in a fresh ``python -m carbongeo.bench _worker`` process.

    Returns:
        The worker's result and peak memory.

    Raises:
        CarbongeoError: The worker stopped on a user error (exit code 2), with its message.
        RuntimeError: The worker failed otherwise (its stderr is in the message).
    """
    if not isinstance(params, worker.params):
        raise TypeError(f"{worker.kind} takes {worker.params.__name__}, got {type(params)}")
    cmd = [sys.executable, "-m", "carbongeo.bench", "_worker", worker.kind, to_json(params)]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        try:
            sampled = _sample_tree(proc)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode == 2 and stderr.strip():
        raise WorkerError(stderr.strip().splitlines()[-1].removeprefix(_ERROR_PREFIX))
    if proc.returncode:
        raise RuntimeError(
            f"bench worker {worker.kind} failed with exit code {proc.returncode}:\n{stderr[-4000:]}"
        )
    data = json.loads(stdout.strip().splitlines()[-1])
    memory = Memory(
        peak_rss_mb=round(data.pop("peak_rss_mb"), 1),
        children_peak_rss_mb=round(data.pop("children_peak_rss_mb"), 1),
        sampled_rss_mb=None if sampled is None else round(sampled, 1),
    )
    return Measured(from_json(worker.result, data), memory)


def worker_main(workers: Mapping[str, Worker[Any, Any]], argv: Sequence[str]) -> int:
    """The worker process: ``_worker KIND PARAMS_JSON``; prints the result as the last line.

    Returns:
        The exit code: 0, or 2 after a user error (printed to stderr).
    """
    if len(argv) != 3 or argv[0] != "_worker" or argv[1] not in workers:
        print(
            "usage: python -m carbongeo.bench _worker KIND PARAMS_JSON (internal)", file=sys.stderr
        )
        return 2
    worker = workers[argv[1]]
    try:
        result = worker.run(from_json(worker.params, json.loads(argv[2])))
    except CarbongeoError as err:
        print(f"{_ERROR_PREFIX}{err}", file=sys.stderr)
        return 2
    data = dataclasses.asdict(result)
    data["peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_SELF)
    data["children_peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)
    print(json.dumps(data))
    return 0
