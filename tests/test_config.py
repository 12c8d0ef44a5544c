"""The pipeline file: parsing, path resolution, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbongeo.config import load_config, parse_years, select_years
from carbongeo.errors import ConfigError, ParameterError

BASE = """
workdir = "runs/x"
years = "2014-2016"

[grid]
tile_size = 64
scale = 8

[target]
path = "data/co2_{year}.tif"
units = "t"

[[aux]]
name = "ntl"
path = "data/ntl_{year}.tif"
kind = "intensive"
transform = "log1p"

[[aux]]
name = "water"
path = "/abs/water.tif"
kind = "categorical"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    return path


def test_valid_config_resolves_paths_and_years(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.years == (2014, 2015, 2016)
    assert config.workdir == tmp_path.resolve() / "runs/x"
    assert config.target.path_for(2015) == tmp_path.resolve() / "data/co2_2015.tif"
    assert config.target.kind == "extensive"
    assert config.aux_names == ["ntl", "water"]
    assert config.aux[1].is_static and config.aux[1].path_for(2014) == Path("/abs/water.tif")
    assert config.aux[0].transform == "log1p"
    assert config.tiles_dir == config.workdir / "tiles"
    assert config.train.epochs > 0 and config.split.ratios == (0.8, 0.1, 0.1)
    assert config.dasymetric_bands() == ["ntl"]


def test_data_hash_ignores_training_knobs(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, BASE))
    b = load_config(write(tmp_path, BASE + "\n[train]\nepochs = 3\n"))
    c = load_config(write(tmp_path, BASE.replace("scale = 8", "scale = 4")))
    assert a.data_hash() == b.data_hash() != c.data_hash()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2014-2016", (2014, 2015, 2016)),
        ("2020", (2020,)),
        (2019, (2019,)),
        ([2016, 2014], (2014, 2016)),
    ],
)
def test_parse_years(value, expected) -> None:
    assert parse_years(value) == expected


@pytest.mark.parametrize("value", ["2016-2014", "twenty", [], True, ["2014"]])
def test_parse_years_rejects(value) -> None:
    with pytest.raises(ConfigError, match="years"):
        parse_years(value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "\nbogus = 1\n", "bogus: unknown key"),
        (
            lambda t: t.replace('units = "t"', 'units = "t"\ncolour = 3'),
            "target.colour: unknown key",
        ),
        (lambda t: t.replace("scale = 8", "scale = 5"), "grid.scale: 5 does not divide"),
        (lambda t: t.replace("scale = 8", 'scale = "8"'), "grid.scale: expected int"),
        (lambda t: t.replace('kind = "categorical"', 'kind = "fuzzy"'), "aux\\[1\\].kind: 'fuzzy'"),
        (lambda t: t.replace('transform = "log1p"', 'transform = "sqrt"'), "aux\\[0\\].transform"),
        (lambda t: "aux = []\n" + t.split("[[aux]]")[0], "aux: the aux list is empty"),
        (lambda t: t.replace('name = "water"', 'name = "ntl"'), "used twice"),
        (lambda t: t.replace('name = "water"\n', ""), "aux\\[1\\].name: missing"),
        (lambda t: t.replace('years = "2014-2016"', 'years = "soon"'), "years: 'soon'"),
        (
            lambda t: t.replace('workdir = "runs/x"\n', "").replace('years = "2014-2016"\n', ""),
            "years: missing",
        ),
        (lambda t: t + "\n[train]\nepochs = 0\n", "train.epochs: must be > 0"),
        (lambda t: t + '\n[train]\ndevice = "tpu"\n', "train.device"),
        (lambda t: t + '\n[model]\nfft_filter = "box"\n', "model.fft_filter"),
        (lambda t: t + "\n[split]\nratios = [1, 2]\n", "split.ratios"),
        (lambda t: t + "\n[split]\nholdout_year = 2030\n", "split.holdout_year"),
        (lambda t: t + "\n[mosaic]\noverlap = 64\n", "mosaic.overlap"),
        (lambda t: t + "\n[grid2]\n", "grid2: unknown key"),
        (lambda t: t.replace("[grid]", '[grid]\ncrs = "EPSG:4326"'), "grid: give crs, resolution"),
        (lambda t: t + '\n[evaluate]\ndasymetric = ["pop"]\n', "evaluate.dasymetric: 'pop'"),
        (
            lambda t: t.replace('kind = "intensive"', 'kind = "intensive"\nband = 0'),
            "aux\\[0\\].band",
        ),
        (lambda t: t.replace('units = "t"', 'units = "t"\nkind = "intensive"'), "target.kind"),
        (lambda t: t + "\n[loss]\nhigh_quantile = 1.5\n", "loss.high_quantile"),
        (
            lambda t: t.replace('transform = "log1p"', 'transform = "log1p"\nzero_classes = [1]'),
            "aux\\[0\\].zero_classes: only a categorical band",
        ),
        (
            lambda t: t.replace('kind = "categorical"', 'kind = "categorical"\nzero_classes = 1'),
            "aux\\[1\\].zero_classes: expected a list",
        ),
        (
            lambda t: t.replace('units = "t"', 'units = "t"\nzero_classes = [1]'),
            "target.zero_classes: unknown key",
        ),
        (lambda t: t + "\n[evaluate]\nforest_pixels = 0\n", "evaluate.forest_pixels"),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(tmp_path: Path, edit, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, edit(BASE)))
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "years = [\n"))


def test_missing_file_for_a_year_names_key_and_year(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for year in (2014, 2016):
        (tmp_path / f"data/co2_{year}.tif").write_bytes(b"")
        (tmp_path / f"data/ntl_{year}.tif").write_bytes(b"")
    text = BASE.replace('"/abs/water.tif"', '"data/co2_2014.tif"')
    config = load_config(write(tmp_path, text))
    config.check_files([2014, 2016])
    with pytest.raises(ConfigError, match="target.path: file for year 2015 not found"):
        load_config(write(tmp_path, text), check_files=True)


def test_select_years(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert select_years(config) == (2014, 2015, 2016)
    assert select_years(config, (2015,)) == (2015,)
    assert select_years(config, (2016, 2015, 2016)) == (2015, 2016)
    with pytest.raises(ParameterError, match="years: 2019 is not in the config") as info:
        select_years(config, (2015, 2019))
    assert info.value.param == "years"


def test_source_keys_label_every_source(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.source_key(config.target) == "target.path"
    labels = [config.source_key(a) for a in config.aux]
    assert labels == [f"aux[{i}].path ({a.name})" for i, a in enumerate(config.aux)]


def test_zero_classes_are_read_and_do_not_make_the_tiles_stale(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, BASE))
    masked = load_config(
        write(
            tmp_path,
            BASE.replace('kind = "categorical"', 'kind = "categorical"\nzero_classes = [1, 2]'),
        )
    )
    assert plain.zero_classes() == {} and masked.zero_classes() == {"water": (1.0, 2.0)}
    # They decide where mass goes, not what the cubes hold.
    assert masked.tiles_hash() == plain.tiles_hash()
    assert masked.split_hash() == plain.split_hash()
    assert masked.data_hash() != plain.data_hash()


# --------------------------------------------------------------------------- supervision
COARSE = '\n[coarse]\npath = "data/coarse_{year}.tif"\nunits = "t / cell"\n'
NO_TARGET = BASE.replace('[target]\npath = "data/co2_{year}.tif"\nunits = "t"\n', "") + COARSE


def test_a_pipeline_without_target_learns_from_the_coarse_product(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NO_TARGET))
    assert config.target is None and config.target_years == ()
    assert config.supervision_choice() == (
        "coarse",
        "no training year (2014-2016) has a target",
    )
    assert config.emission_units == "t / cell"
    assert [s.name for s in config.sources_for(2014)] == ["coarse", "ntl", "water"]


def test_target_years_limit_where_a_target_is_read(tmp_path: Path) -> None:
    text = BASE.replace('units = "t"', 'units = "t"\nyears = "2014-2015"') + COARSE
    config = load_config(write(tmp_path, text))
    assert config.target_years == (2014, 2015)
    assert config.has_target(2015) and not config.has_target(2016)
    assert "target" not in [s.name for s in config.sources_for(2016)]
    assert config.supervision_choice() == ("fine", "the training years 2014-2015 have a target")
    held_out = text.replace("[[aux]]", "[split]\nholdout_year = 2014\n\n[[aux]]", 1)
    assert load_config(write(tmp_path, held_out)).supervision == "fine"


def test_auto_is_fine_with_targets_and_hashes_stay_those_of_fine(tmp_path: Path) -> None:
    fine = load_config(write(tmp_path, BASE + COARSE))
    explicit = load_config(write(tmp_path, BASE + COARSE + '\n[train]\nsupervision = "fine"\n'))
    assert fine.supervision == "fine"
    assert fine.data_hash() == explicit.data_hash() and fine.recorded_raw() == fine.raw


def test_the_prior_is_a_forest_under_fine_and_fitted_under_coarse_supervision(
    tmp_path: Path,
) -> None:
    assert load_config(write(tmp_path, NO_TARGET)).prior_kind == "fitted"
    assert load_config(write(tmp_path, BASE + COARSE)).prior_kind == "forest"
    fitted = load_config(write(tmp_path, BASE + '\n[train]\nprior = "fitted"\n'))
    zero = load_config(write(tmp_path, NO_TARGET + '\n[train]\nprior = "zero"\n'))
    assert (fitted.prior_kind, zero.prior_kind) == ("fitted", "zero")
    forest = load_config(write(tmp_path, NO_TARGET + '\n[train]\nprior = "forest"\n'))
    with pytest.raises(ConfigError, match="train.prior: forest is fitted on the fine truth"):
        forest.prior_kind  # noqa: B018
    assert fitted.data_hash() == load_config(write(tmp_path, BASE)).data_hash()


def test_coarse_hashes_ignore_the_target(tmp_path: Path) -> None:
    coarse = '\n[train]\nsupervision = "coarse"\n'
    a = load_config(write(tmp_path, BASE + COARSE + coarse))
    b = load_config(write(tmp_path, NO_TARGET + coarse))
    c = load_config(write(tmp_path, BASE + COARSE))
    assert a.data_hash() == b.data_hash() != c.data_hash()
    assert a.split_hash() == b.split_hash() != c.split_hash()
    assert "target" not in a.recorded_raw()
    factors = load_config(write(tmp_path, NO_TARGET + coarse + "coarse_factors = [2]\n"))
    assert factors.train.coarse_factors == (2,) and factors.data_hash() != b.data_hash()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NO_TARGET.replace(COARSE, ""), "coarse: missing; a pipeline without a \\[target\\]"),
        (
            BASE.replace('units = "t"', 'units = "t"\nyears = 2014'),
            "coarse: missing; 2015 has no target",
        ),
        (NO_TARGET + '\n[train]\nsupervision = "fine"\n', "train.supervision: 'fine' needs"),
        (
            BASE.replace('units = "t"', 'units = "t"\nyears = 2014')
            + COARSE
            + '\n[split]\nholdout_year = 2014\n[train]\nsupervision = "fine"\n',
            "train.supervision: 'fine' needs a target in a training year",
        ),
        (BASE + '\n[train]\nsupervision = "coarse"\n', "train.supervision: 'coarse' learns"),
        (BASE + '\n[train]\nsupervision = "weak"\n', "train.supervision: 'weak' is not one of"),
        (BASE + '\n[train]\nprior = "linear"\n', "train.prior: 'linear' is not one of"),
        (NO_TARGET + "\n[train]\ncoarse_factors = [1, 2]\n", "train.coarse_factors: each"),
        (NO_TARGET + "\n[train]\ncoarse_factors = [3]\n", "train.coarse_factors: 3 x grid.scale"),
        (NO_TARGET + "\n[train]\ncoarse_factors = []\n", "train.coarse_factors: expected"),
        (BASE.replace('units = "t"', 'units = "t"\nyears = 2030'), "target.years: 2030"),
        (BASE.replace('units = "t"', 'units = "t"\nyear = 2014'), "target.year: unknown .*years"),
    ],
)
def test_each_supervision_mistake_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_config(write(tmp_path, text))
    assert "\n" not in str(info.value)
