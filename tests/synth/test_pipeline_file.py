"""The pipeline-file writer: values, layout, and the file of a synthetic world."""

from __future__ import annotations

import tomllib

import pytest

from carbongeo.synth import SIZES, world_config_text
from carbongeo.synth.layers import AUX_LAYERS
from carbongeo.synth.pipeline_file import Verbatim, pipeline_text, toml_value, years_value


def test_values() -> None:
    assert toml_value("a\\b") == '"a\\\\b"'
    assert toml_value(True) == "true"
    assert toml_value(3) == "3"
    assert toml_value(0.1) == "0.1"
    assert toml_value([0.8, 0.1]) == "[0.8, 0.1]"
    assert toml_value(Verbatim("2e-3")) == "2e-3"
    with pytest.raises(TypeError):
        toml_value(None)  # type: ignore[arg-type]


def test_text_parses_back_in_order() -> None:
    text = pipeline_text(
        {"workdir": "run", "years": years_value([2020])},
        [("[grid]", {"tile_size": 64}), ("[[aux]]", {"name": "a"}), ("[[aux]]", {"name": "b"})],
    )
    assert text.startswith('workdir = "run"\nyears = [2020]\n\n[grid]\n') and text.endswith("\n")
    assert tomllib.loads(text) == {
        "workdir": "run",
        "years": [2020],
        "grid": {"tile_size": 64},
        "aux": [{"name": "a"}, {"name": "b"}],
    }


def test_years() -> None:
    assert years_value([2014, 2015, 2016]) == "2014-2016"
    assert years_value([2014, 2016]) == [2014, 2016]
    assert years_value([2014]) == [2014]


def test_world_config_lists_every_aux_layer() -> None:
    spec = SIZES["medium"]
    config = tomllib.loads(world_config_text(spec, [2014, 2015]))
    assert [aux["name"] for aux in config["aux"]] == [layer.name for layer in AUX_LAYERS]
    assert config["grid"] == {"tile_size": spec.tile_size, "scale": spec.scale}
    assert config["train"]["lr"] == 2e-3 and config["mosaic"]["overlap"] == 32


def test_sizes_share_their_defaults() -> None:
    assert {spec.name for spec in SIZES.values()} == set(SIZES)
    assert {spec.scale for spec in SIZES.values()} == {8}
    assert SIZES["tiny"].last_year == 2016 and SIZES["small"].last_year == 2023
