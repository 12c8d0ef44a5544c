"""The ready pipeline files in pipelines/ stay valid and in step with what the code writes."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from carbongeo.config import load_config, parse_config
from carbongeo.synth import SIZES, world_config_text

REPO = Path(__file__).resolve().parents[2]


def test_demo_pipeline_is_what_synth_writes_into_demo_world() -> None:
    shipped = load_config(REPO / "pipelines" / "demo.toml")
    spec = SIZES["small"]
    text = world_config_text(spec, list(range(spec.first_year, spec.last_year + 1)))
    written = parse_config(tomllib.loads(text), REPO / "demo" / "world")
    assert dataclasses.replace(written, path=shipped.path) == shipped


def test_every_shipped_pipeline_parses() -> None:
    files = sorted((REPO / "pipelines").glob("*.toml"))
    assert files
    for path in files:
        assert load_config(path).aux
