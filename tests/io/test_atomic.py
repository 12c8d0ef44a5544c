"""Atomic writes: temp name in the same folder, rename on success, cleanup on failure."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from carbongeo.errors import OutputError
from carbongeo.io.atomic import (
    AtomicGroup,
    atomic_path,
    file_lock,
    host_id,
    remove_stale_temps,
    temp_path,
    write_json_atomic,
    write_text_atomic,
    writer_id,
)


def test_temp_path_is_hidden_in_the_same_folder(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "X_2014.npy")
    assert tmp.parent == tmp_path
    assert tmp.name == f".X_2014.tmp-{writer_id()}.npy"


def test_atomic_path_commits_on_success(tmp_path: Path) -> None:
    target = tmp_path / "a.npy"
    with atomic_path(target) as tmp:
        np.save(tmp, np.arange(3))
        assert not target.exists()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_keeps_old_file_and_removes_temp_on_error(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_write_json_atomic_replaces(tmp_path: Path) -> None:
    target = tmp_path / "index.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert list(tmp_path.iterdir()) == [target]


def test_unwritable_destination_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        write_text_atomic(blocker / "out.txt", "x")


def test_group_commits_all_or_nothing(tmp_path: Path) -> None:
    with AtomicGroup() as group:
        for name in ("X.npy", "Y.npy"):
            group.add(tmp_path / name).write_bytes(b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "Y.npy"]

    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(KeyboardInterrupt), AtomicGroup() as group:
        group.add(other / "X.npy").write_bytes(b"data")
        group.add(other / "Y.npy").write_bytes(b"data")
        raise KeyboardInterrupt
    assert list(other.iterdir()) == []


def test_group_explicit_commit_is_idempotent(tmp_path: Path) -> None:
    with AtomicGroup(fsync=False) as group:
        group.add(tmp_path / "a").write_bytes(b"1")
        group.commit()
        assert (tmp_path / "a").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_remove_stale_temps_only_removes_dead_writers(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(proc.stdout)
    stale = tmp_path / f".X_2014.tmp-{host_id()}-{dead_pid}-0123abcd.npy"
    mine = temp_path(tmp_path / "Y_2014.npy")
    keep = tmp_path / "X_2014.npy"
    for path in (stale, mine, keep):
        path.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, keep.name])


def test_file_lock_serialises(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    order: list[str] = []

    def worker() -> None:
        with file_lock(lock):
            order.append("second")

    with file_lock(lock):
        thread = threading.Thread(target=worker)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
