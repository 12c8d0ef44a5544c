"""Tests of DSTCarbonFormer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestRegressor
from torch import nn

from carbongeo.models import DSTCarbonFormer, count_parameters
from carbongeo.models.losses import HybridLoss
from carbongeo.models.network import FOREST_FLOOR
from carbongeo.models.trees import TreeEnsemble
from carbongeo.ops.blocks import block_sum, upsample_blocks

TINY = {"dim": 8, "depth": 1}


def make_inputs(
    batch: int, channels: int, years: int, height: int, width: int, scale: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    aux = torch.randn(batch, channels, years, height, width, generator=generator)
    coarse = torch.rand(batch, 1, years, height // scale, width // scale, generator=generator)
    coarse = coarse * 1000.0 * scale * scale
    return aux, coarse


def relative_block_error(out: torch.Tensor, coarse: torch.Tensor, scale: int) -> float:
    error = (block_sum(out.detach(), scale) - coarse).abs()
    return float((error / coarse.abs().clamp_min(1e-12)).max())


@pytest.mark.parametrize(("height", "width"), [(32, 48), (64, 64), (128, 128)])
@pytest.mark.parametrize("scale", [2, 4, 8, 16])
@pytest.mark.parametrize(("years", "channels"), [(1, 1), (3, 9)])
def test_output_shape_and_constraints(
    height: int, width: int, scale: int, years: int, channels: int
) -> None:
    torch.manual_seed(0)
    model = DSTCarbonFormer(channels, scale, temporal=years, value_scale=100.0, **TINY)
    aux, coarse = make_inputs(2, channels, years, height, width, scale)
    with torch.no_grad():
        out = model(aux, coarse)
    assert out.shape == (2, 1, height, width)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert bool((out >= 0).all())
    assert relative_block_error(out, coarse[:, :, years // 2], scale) < 1e-4


@pytest.mark.parametrize(("fft", "mass"), [(True, True), (True, False), (False, True)])
def test_adversarial_head_stays_finite_and_conservative(fft: bool, mass: bool) -> None:
    torch.manual_seed(1)
    model = DSTCarbonFormer(3, 4, fft_constraint=fft, mass_constraint=mass, **TINY)
    last = model.head[-1]
    assert isinstance(last, nn.Conv2d)
    with torch.no_grad():
        last.weight.normal_(0.0, 1e6)
        assert last.bias is not None
        last.bias.fill_(1e6)
    aux, coarse = make_inputs(2, 3, 3, 32, 32, 4, seed=1)
    coarse = coarse * 1e6
    out = model(aux, coarse)
    assert bool(torch.isfinite(out).all())
    assert bool((out >= 0).all())
    if mass:
        assert relative_block_error(out, coarse[:, :, 1], 4) < 1e-4
    out.sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name


def test_zero_coarse_cells_give_zero_pixels() -> None:
    torch.manual_seed(2)
    model = DSTCarbonFormer(2, 8, **TINY)
    aux, coarse = make_inputs(1, 2, 3, 32, 32, 8, seed=2)
    coarse[:, :, 1, 0, 0] = 0.0
    coarse[:, :, 1, 2, 3] = 0.0
    with torch.no_grad():
        out = model(aux, coarse)
    assert bool((out[..., 0:8, 0:8] == 0).all())
    assert bool((out[..., 16:24, 24:32] == 0).all())
    assert float(out[..., 8:16, 8:16].min()) > 0
    assert relative_block_error(out, coarse[:, :, 1], 8) < 1e-4


def test_all_zero_coarse_gives_all_zero_output() -> None:
    model = DSTCarbonFormer(2, 4, **TINY)
    aux, coarse = make_inputs(1, 2, 3, 16, 16, 4)
    with torch.no_grad():
        out = model(aux, torch.zeros_like(coarse))
    assert bool((out == 0).all())


def test_non_finite_inputs_do_not_produce_nan() -> None:
    model = DSTCarbonFormer(2, 4, **TINY)
    aux, coarse = make_inputs(1, 2, 3, 16, 16, 4)
    aux[0, 0, 0, :4] = float("nan")
    aux[0, 1, 2, 5] = float("inf")
    coarse[0, 0, 0, 0, 0] = float("nan")
    coarse[0, 0, 1, 1, 1] = float("inf")
    coarse[0, 0, 1, 2, 2] = -5.0
    with torch.no_grad():
        out = model(aux, coarse)
    assert bool(torch.isfinite(out).all())
    assert bool((out[..., 4:8, 4:8] == 0).all())
    assert bool((out[..., 8:12, 8:12] == 0).all())


def test_output_is_equivariant_to_the_physical_unit() -> None:
    # The network sees log1p(density / value_scale): scaling the data and value_scale together
    # scales the output.
    torch.manual_seed(3)
    model = DSTCarbonFormer(2, 4, value_scale=10.0, **TINY)
    rescaled = DSTCarbonFormer(**{**model.config, "value_scale": 10.0 * 1e3})
    rescaled.load_state_dict(model.state_dict())
    aux, coarse = make_inputs(2, 2, 3, 32, 32, 4)
    with torch.no_grad():
        out = model(aux, coarse)
        out_rescaled = rescaled(aux, coarse * 1e3)
    torch.testing.assert_close(out_rescaled, out * 1e3, rtol=1e-3, atol=1e-3)


def test_output_depends_on_aux_and_on_neighbouring_years() -> None:
    torch.manual_seed(4)
    model = DSTCarbonFormer(2, 4, **TINY)
    aux, coarse = make_inputs(1, 2, 3, 32, 32, 4)
    with torch.no_grad():
        out = model(aux, coarse)
        other_aux = model(aux + torch.randn_like(aux), coarse)
        changed = coarse.clone()
        changed[:, :, 0] *= 3.0
        other_year = model(aux, changed)
    assert not torch.allclose(out, other_aux)
    assert not torch.allclose(out, other_year)


@pytest.mark.parametrize("fft", [False, True])
@pytest.mark.parametrize("years", [1, 3])
def test_gradients_reach_every_parameter(years: int, fft: bool) -> None:
    torch.manual_seed(5)
    scale = 4
    model = DSTCarbonFormer(3, scale, temporal=years, value_scale=50.0, fft_constraint=fft, **TINY)
    aux, coarse = make_inputs(2, 3, years, 32, 32, scale)
    target = torch.rand(2, 1, 32, 32) * 100.0 * (torch.rand(2, 1, 32, 32) > 0.5)
    mask = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    mask[0, 0, :8] = False
    loss = HybridLoss(scale, value_scale=50.0, high_threshold=80.0)
    total, _ = loss(model(aux, coarse), target, coarse[:, :, years // 2], mask)
    total.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert bool(torch.isfinite(parameter.grad).all()), name
        assert float(parameter.grad.abs().sum()) > 0, name


def test_forward_under_cpu_autocast_keeps_constraints_exact() -> None:
    torch.manual_seed(6)
    model = DSTCarbonFormer(2, 8, **TINY)
    aux, coarse = make_inputs(2, 2, 3, 32, 32, 8)
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(aux, coarse)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert relative_block_error(out, coarse[:, :, 1], 8) < 1e-4


def test_config_rebuilds_an_identical_model() -> None:
    torch.manual_seed(7)
    model = DSTCarbonFormer(
        4, 8, dim=8, depth=1, temporal=1, fft_filter="butterworth", value_scale=3.5
    )
    clone = DSTCarbonFormer(**model.config)
    clone.load_state_dict(model.state_dict())
    assert clone.config == model.config
    aux, coarse = make_inputs(1, 4, 1, 32, 32, 8)
    with torch.no_grad():
        torch.testing.assert_close(clone(aux, coarse), model(aux, coarse))


def test_parameter_counts() -> None:
    tiny = count_parameters(DSTCarbonFormer(9, 8, dim=8, depth=1))
    full = count_parameters(DSTCarbonFormer(9, 8, dim=48, depth=2))
    assert tiny < 100_000
    assert 1_000_000 <= full <= 3_000_000


def test_constraints_can_be_switched_off() -> None:
    torch.manual_seed(8)
    model = DSTCarbonFormer(2, 4, fft_constraint=False, mass_constraint=False, **TINY)
    assert model.fft is None
    assert model.mass is None
    aux, coarse = make_inputs(1, 2, 3, 16, 16, 4)
    coarse[:, :, 1, 0, 0] = 0.0
    with torch.no_grad():
        out = model(aux, coarse)
    assert bool((out >= 0).all())
    # Without constraints the output is the nearest density times exp(log-ratio): zero cells stay 0.
    assert bool((out[..., :4, :4] == 0).all())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 6}, "multiple of 4"),
        ({"depth": 0}, "depth"),
        ({"temporal": 2}, "odd"),
        ({"fft_filter": "box"}, "fft_filter"),
        ({"value_scale": 0.0}, "value_scale"),
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DSTCarbonFormer(2, 4, **kwargs)  # type: ignore[arg-type]


def test_mismatched_inputs_are_rejected() -> None:
    model = DSTCarbonFormer(2, 4, **TINY)
    aux, coarse = make_inputs(1, 2, 3, 16, 16, 4)
    with pytest.raises(ValueError, match="aux channels"):
        model(aux[:, :1], coarse)
    with pytest.raises(ValueError, match="T=3"):
        model(aux[:, :, :1], coarse[:, :, :1])
    with pytest.raises(ValueError, match="coarse of shape"):
        model(aux, coarse[..., :2, :])
    with pytest.raises(ValueError, match="not a multiple of scale"):
        model(torch.randn(1, 2, 3, 18, 16), coarse)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
def test_tiny_model_compiles() -> None:
    torch.manual_seed(9)
    model = DSTCarbonFormer(3, 4, **TINY).eval()
    aux, coarse = make_inputs(2, 3, 3, 32, 32, 4)
    compiled = torch.compile(model)
    with torch.no_grad():
        expected = model(aux, coarse)
        out = compiled(aux, coarse)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-3)
    assert relative_block_error(out, coarse[:, :, 1], 4) < 1e-4


@pytest.mark.parametrize("fft", [False, True])
def test_a_coarser_input_is_spread_and_conserved_on_its_own_cells(fft: bool) -> None:
    torch.manual_seed(0)
    model = DSTCarbonFormer(3, 4, fft_constraint=fft, **TINY).eval()
    aux, product = make_inputs(2, 3, 3, 32, 32, scale=4)
    coarse = block_sum(product, 2)  # cells of 8 px
    with torch.no_grad():
        out = model(aux, coarse, 2)
        spread = model(aux, torch.kron(coarse, torch.ones(2, 2)) / 4)  # the same cells, at s
    assert out.shape == (2, 1, 32, 32) and bool((out >= 0).all())
    assert relative_block_error(out, coarse[:, :, 1], 8) < 1e-4
    # The network sees the spread product; only the blocks of the mass constraint differ.
    assert relative_block_error(spread, coarse[:, :, 1], 8) < 1e-4
    assert relative_block_error(out, block_sum(spread, 4), 4) > 1e-3
    with pytest.raises(ValueError, match="factor 2"):
        model(aux[..., :28, :28], coarse[..., :3, :3], 2)


def test_factor_one_is_the_plain_call() -> None:
    torch.manual_seed(0)
    model = DSTCarbonFormer(3, 4, **TINY).eval()
    aux, coarse = make_inputs(1, 3, 3, 16, 16, scale=4)
    with torch.no_grad():
        assert torch.equal(model(aux, coarse, 1), model(aux, coarse))


def forest_model(channels: int = 3, scale: int = 4) -> DSTCarbonFormer:
    """A tiny model whose forest prior was fitted on its own features of random inputs."""
    torch.manual_seed(0)
    plain = DSTCarbonFormer(channels, scale, **TINY).eval()
    aux, coarse = make_inputs(2, channels, 3, 32, 32, scale)
    features = plain.forest_features(aux, coarse)
    rows = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).numpy()
    label = np.exp(rows[:, 0])  # the forest learns "more where band 0 is high"
    fitted = RandomForestRegressor(4, max_depth=5, random_state=0).fit(rows, label)
    trees = TreeEnsemble.from_sklearn(fitted)
    model = DSTCarbonFormer(channels, scale, **TINY, forest=trees.size).eval()
    model.load_state_dict(plain.state_dict(), strict=False)
    assert model.forest is not None
    model.forest.load_state_dict(trees.state_dict())
    return model


def test_a_forest_prior_is_blended_in_and_mass_stays_exact() -> None:
    model = forest_model()
    aux, coarse = make_inputs(2, 3, 3, 32, 32, 4, seed=3)
    with torch.no_grad():
        blended = model(aux, coarse)
        alone = model(aux, coarse, network_only=True)
        values = model.forest_values(aux, coarse)
        cached = model(aux, coarse, forest_values=values)
        coarser = model(aux, block_sum(coarse, 2), 2)
    assert relative_block_error(blended, coarse[:, :, 1], 4) < 1e-4
    assert relative_block_error(coarser, block_sum(coarse, 2)[:, :, 1], 8) < 1e-4
    assert torch.equal(cached, blended)
    # The blend is the geometric mean of the network's and the forest's allocations (up to the
    # soft bound on the log-ratio, which acts after the blend).
    forest_share = values + FOREST_FLOOR * model.value_scale
    geometric = torch.sqrt(alone * forest_share)
    expected = geometric * upsample_blocks(coarse[:, :, 1] / block_sum(geometric, 4), 4)
    torch.testing.assert_close(blended, expected, rtol=1e-2, atol=1e-2)
    assert not torch.allclose(blended, alone)


def test_a_forest_prior_rebuilds_from_its_config_and_checks_its_features() -> None:
    model = forest_model()
    rebuilt = DSTCarbonFormer(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    aux, coarse = make_inputs(1, 3, 3, 32, 32, 4, seed=5)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(aux, coarse), model(aux, coarse))
    wrong = {**model.config, "aux_channels": 4}
    with pytest.raises(ValueError, match="reads 9 features"):
        DSTCarbonFormer(**wrong)
    with pytest.raises(ValueError, match="no forest prior"):
        DSTCarbonFormer(3, 4, **TINY).forest_values(aux, coarse)
