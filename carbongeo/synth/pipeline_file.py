"""Writing pipeline files: a small TOML writer, and the pipeline file of a synthetic world.

:func:`pipeline_text` renders top-level keys and tables in the order given, so a generated file
reads like a hand-written one (``docs/pipeline-file.md``); :func:`world_config_text` is the file
`generate_world` writes next to its rasters.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TypeAlias

from carbongeo.synth.layers import AUX_LAYERS, COARSE, TARGET
from carbongeo.synth.sizes import SynthSize


class Verbatim(str):
    """A TOML value written exactly as given, e.g. ``Verbatim("2e-3")`` for a learning rate."""


TomlValue: TypeAlias = str | bool | int | float | Sequence["TomlValue"]
Table = tuple[str, Mapping[str, TomlValue]]
"""A table header as written (``[grid]``, ``[[aux]]``) and its keys in order."""


def toml_value(value: TomlValue) -> str:
    """The TOML text of one value: strings quoted, lists in brackets, floats in full.

    Raises:
        TypeError: A value TOML cannot hold here (None, a mapping, ...).
    """
    if isinstance(value, Verbatim):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a TOML value")


def pipeline_text(top: Mapping[str, TomlValue], tables: Sequence[Table]) -> str:
    """A pipeline file: the top-level keys, then each table after a blank line.

    Args:
        top: Top-level keys (``workdir``, ``years``) in order.
        tables: ``(header, keys)`` pairs in order; repeat ``[[aux]]`` once per band.

    Returns:
        The file's text, ending with a newline.
    """
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for header, keys in tables:
        lines += ["", header, *(f"{key} = {toml_value(value)}" for key, value in keys.items())]
    return "\n".join([*lines, ""])


def years_value(years: Sequence[int]) -> str | list[int]:
    """``years`` of a pipeline file: a ``"first-last"`` range when consecutive, else a list."""
    years = list(years)
    if len(years) > 1 and years == list(range(years[0], years[-1] + 1)):
        return f"{years[0]}-{years[-1]}"
    return years


def world_config_text(
    spec: SynthSize, years: Sequence[int], target_years: Sequence[int] | None = None
) -> str:
    """The pipeline file of a synthetic world of size `spec` with these (sorted) years.

    Args:
        spec: The world's size.
        years: The years of the pipeline.
        target_years: None: a `[target]` for every year (the default file). Otherwise the years
            the pipeline gets a target for (`target.years`); empty: no `[target]` at all. The
            truth rasters are written either way; `[coarse]` then also carries the units.
    """
    target: list[Table] = [
        ("[target]", {"path": TARGET.path, "kind": TARGET.kind, "units": TARGET.units})
    ]
    coarse: dict[str, TomlValue] = {"path": COARSE.path}
    if target_years is not None:
        coarse["units"] = COARSE.units
        target = []
        if target_years:
            keys = {"path": TARGET.path, "years": years_value(sorted(target_years))}
            target = [("[target]", {**keys, "kind": TARGET.kind, "units": TARGET.units})]
    aux: list[Table] = [
        (
            "[[aux]]",
            {
                "name": layer.name,
                "path": layer.path,
                "kind": layer.kind,
                "transform": layer.transform,
                "units": layer.units,
                **({"zero_classes": list(layer.zero_classes)} if layer.zero_classes else {}),
            },
        )
        for layer in AUX_LAYERS
    ]
    return pipeline_text(
        {"workdir": "runs", "years": years_value(years)},
        [
            ("[grid]", {"tile_size": spec.tile_size, "scale": spec.scale}),
            *target,
            ("[coarse]", coarse),
            *aux,
            (
                "[split]",
                {
                    "ratios": [0.8, 0.1, 0.1],
                    "block_tiles": spec.block_tiles,
                    "buffer_tiles": 1,
                    "min_valid_fraction": 0.5,
                    "seed": 0,
                },
            ),
            ("[model]", {"dim": spec.model_dim, "depth": spec.model_depth}),
            (
                "[train]",
                {
                    "epochs": spec.epochs,
                    "batch_size": spec.batch_size,
                    "lr": Verbatim("2e-3"),
                    "num_workers": 0,
                },
            ),
            ("[mosaic]", {"overlap": spec.overlap}),
        ],
    )
