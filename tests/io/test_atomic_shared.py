"""Temporary files on storage shared by several hosts: who may remove whose leftovers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from carbongeo.io.atomic import (
    FOREIGN_TEMP_MAX_AGE,
    host_id,
    is_stale_temp,
    remove_stale_temps,
    temp_path,
    writer_id,
)

DEAD_PID = 2**22 + 4242  # beyond any kernel's largest process id


def _touch(path: Path, age: float = 0.0) -> Path:
    path.write_bytes(b"x")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_temp_names_carry_host_process_and_token(tmp_path: Path) -> None:
    name = temp_path(tmp_path / "X_2014.npy").name
    assert name.startswith(f".X_2014.tmp-{host_id()}-{os.getpid()}-") and name.endswith(".npy")
    assert writer_id() in name
    assert host_id() in name and len(writer_id().rsplit("-", 1)[1]) == 8


@pytest.mark.parametrize(
    "host",
    ["second-host_4026531836", "OTHER"],
    ids=["another-host", "another-host-name"],
)
def test_a_dead_pid_of_another_host_means_nothing_here(tmp_path: Path, host: str) -> None:
    name = f".X_2014.tmp-{host.replace('-', '_')}-{DEAD_PID}-0123abcd.npy"
    young = _touch(tmp_path / name)
    assert not is_stale_temp(young)
    assert remove_stale_temps(tmp_path) == []
    _touch(young, age=FOREIGN_TEMP_MAX_AGE + 60)  # abandoned a day ago: removed
    assert remove_stale_temps(tmp_path) == [young]


def test_same_host_name_in_another_pid_namespace_is_another_host(tmp_path: Path) -> None:
    other_namespace = f"{host_id()}9"  # same name, another namespace number
    temp = _touch(tmp_path / f".Y_2014.tmp-{other_namespace}-{DEAD_PID}-0123abcd.npy")
    assert not is_stale_temp(temp)


def test_this_hosts_dead_writer_is_removed_at_once(tmp_path: Path) -> None:
    dead = _touch(tmp_path / f".Y_2014.tmp-{host_id()}-{DEAD_PID}-0123abcd.npy")
    alive = _touch(temp_path(tmp_path / "X_2014.npy"))
    assert remove_stale_temps(tmp_path) == [dead]
    assert alive.exists()


def test_older_names_without_a_host_go_by_age(tmp_path: Path) -> None:
    older = _touch(tmp_path / f".X_2014.tmp-{DEAD_PID}.npy")
    assert remove_stale_temps(tmp_path) == []
    _touch(older, age=FOREIGN_TEMP_MAX_AGE + 60)
    assert remove_stale_temps(tmp_path) == [older]
