"""The bench harness: typed parameters through JSON, worker exit codes, a light parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from carbongeo.bench import workers
from carbongeo.bench.harness import Worker, from_json, run_worker, to_json, worker_main
from carbongeo.errors import CarbongeoError, ConfigError

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class _Params:
    name: str
    sizes: tuple[int, ...]
    models: tuple[tuple[str, int], ...]
    limit: int | None = None


@dataclass(frozen=True)
class _Result:
    value: float


def test_params_survive_json_as_tuples() -> None:
    params = _Params("a", (1, 2), (("m", 3),))
    assert from_json(_Params, json.loads(to_json(params))) == params


def _fail(params: _Params) -> _Result:
    raise ConfigError(f"scene: {params.name} is broken")


def _succeed(params: _Params) -> _Result:
    return _Result(float(sum(params.sizes)))


def test_worker_main_prints_the_result_or_one_error_line(capsys: pytest.CaptureFixture) -> None:
    table = {
        "fail": Worker("fail", _Params, _Result, _fail),
        "ok": Worker("ok", _Params, _Result, _succeed),
    }
    args = '{"name": "x", "sizes": [1, 2], "models": []}'
    assert worker_main(table, ["_worker", "ok", args]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(out)
    assert result["value"] == 3.0 and result["peak_rss_mb"] > 0
    assert worker_main(table, ["_worker", "fail", args]) == 2
    assert capsys.readouterr().err.strip() == "carbongeo: error: scene: x is broken"
    assert worker_main(table, ["_worker", "nope", args]) == 2


def test_a_user_error_in_a_worker_reaches_the_parent(tmp_path: Path) -> None:
    with pytest.raises(CarbongeoError, match=str(tmp_path / "missing")):
        run_worker(workers.READ, workers.ReadParams(str(tmp_path / "missing")))
    with pytest.raises(TypeError):
        run_worker(workers.READ, workers.SceneParams(str(tmp_path), 1))  # type: ignore[arg-type]


def test_the_parent_imports_nothing_heavy() -> None:
    code = (
        "import sys, carbongeo.bench, carbongeo.bench.workers, carbongeo.bench.suite; "
        "print(sorted(m for m in ('numpy', 'torch', 'rasterio', 'dask') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
