"""Tests of the FFT and mass hard constraints."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from carbongeo.models.constraints import (
    FILTERS,
    FFTHardConstraint,
    MassConstraint,
    bicubic_mass_upsample,
    fft_low_pass_replace,
    lowpass_mask,
    lowpass_radius,
    mass_conserve,
    symmetric_extend,
)
from carbongeo.ops.blocks import block_sum, upsample_blocks


def relative_block_error(pred: torch.Tensor, coarse: torch.Tensor, scale: int) -> float:
    error = (block_sum(pred.detach(), scale) - coarse).abs()
    return float((error / coarse.abs().clamp_min(1e-30)).max())


def gradient_energy(x: torch.Tensor) -> float:
    return float((x.diff(dim=-1) ** 2).sum() + (x.diff(dim=-2) ** 2).sum())


# ----------------------------------------------------------------------------------- mass


@pytest.mark.parametrize(("height", "width", "scale"), [(32, 48, 2), (64, 64, 4), (32, 48, 16)])
def test_mass_conserve_random_inputs(height: int, width: int, scale: int) -> None:
    torch.manual_seed(0)
    pred = torch.rand(3, 1, height, width) * 10.0 - 2.0
    coarse = torch.rand(3, 1, height // scale, width // scale) * 1e4 + 1.0
    out = mass_conserve(pred, coarse, scale)
    assert out.shape == pred.shape
    assert bool((out >= 0).all())
    assert relative_block_error(out, coarse, scale) < 1e-4


def test_mass_conserve_keeps_within_block_proportions() -> None:
    torch.manual_seed(1)
    pred = torch.rand(1, 1, 8, 8) + 0.1
    coarse = torch.rand(1, 1, 2, 2) + 0.5
    out = mass_conserve(pred, coarse, 4)
    expected = pred * upsample_blocks(coarse / block_sum(pred, 4), 4)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize(
    "make_pred",
    [
        pytest.param(lambda shape: torch.rand(shape) * 1e30, id="huge"),
        pytest.param(lambda shape: torch.full(shape, torch.finfo(torch.float32).max), id="max"),
        pytest.param(lambda shape: -torch.rand(shape) * 1e30, id="negative"),
        pytest.param(lambda shape: torch.zeros(shape), id="zero"),
        pytest.param(lambda shape: torch.full(shape, 1e-44), id="subnormal"),
        pytest.param(
            lambda shape: torch.where(
                torch.rand(shape) > 0.5, torch.tensor(float("inf")), torch.tensor(float("nan"))
            ),
            id="inf-nan",
        ),
    ],
)
def test_mass_conserve_adversarial_predictions(
    make_pred: Callable[[tuple[int, ...]], torch.Tensor],
) -> None:
    torch.manual_seed(2)
    scale = 4
    pred = make_pred((2, 1, 16, 24)).requires_grad_(True)
    coarse = torch.rand(2, 1, 4, 6) * 1e3 + 1.0
    out = mass_conserve(pred, coarse, scale)
    assert bool(torch.isfinite(out).all())
    assert bool((out >= 0).all())
    assert relative_block_error(out, coarse, scale) < 1e-4
    out.sum().backward()
    assert pred.grad is not None
    assert bool(torch.isfinite(pred.grad).all())


def test_mass_conserve_zero_prediction_spreads_uniformly() -> None:
    coarse = torch.tensor([[[[16.0, 32.0]]]])
    out = mass_conserve(torch.zeros(1, 1, 4, 8), coarse, 4)
    torch.testing.assert_close(out, upsample_blocks(coarse / 16.0, 4))


def test_mass_conserve_zero_cell_gives_zeros() -> None:
    torch.manual_seed(3)
    pred = torch.rand(1, 1, 8, 8) * 100.0 + 1.0
    coarse = torch.tensor([[[[0.0, 5.0], [7.0, 0.0]]]])
    out = mass_conserve(pred, coarse, 4)
    assert bool((out[..., :4, :4] == 0).all())
    assert bool((out[..., 4:, 4:] == 0).all())
    assert bool((out[..., :4, 4:] > 0).all())


def test_mass_conserve_gradients_are_finite_with_empty_blocks() -> None:
    pred = torch.zeros(1, 1, 8, 8)
    pred[..., :4, :4] = torch.rand(4, 4)
    pred.requires_grad_(True)
    coarse = torch.tensor([[[[3.0, 0.0], [2.0, 1.0]]]])
    (mass_conserve(pred, coarse, 4) ** 2).sum().backward()
    assert pred.grad is not None
    assert bool(torch.isfinite(pred.grad).all())
    assert float(pred.grad[..., :4, :4].abs().sum()) > 0


def test_mass_conserve_nan_cell_stays_local() -> None:
    pred = torch.rand(1, 1, 4, 8)
    coarse = torch.tensor([[[[float("nan"), 2.0]]]])
    out = mass_conserve(pred, coarse, 4)
    assert bool(out[..., :4].isnan().all())
    assert bool(torch.isfinite(out[..., 4:]).all())
    torch.testing.assert_close(out[..., 4:].sum(), torch.tensor(2.0))


def test_mass_constraint_module_runs_in_float32_under_autocast() -> None:
    torch.manual_seed(4)
    pred = torch.rand(2, 1, 16, 16, dtype=torch.bfloat16)
    coarse = torch.rand(2, 1, 2, 2) * 100.0 + 1.0
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = MassConstraint(8)(pred, coarse)
    assert out.dtype == torch.float32
    assert relative_block_error(out, coarse, 8) < 1e-4


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
def test_bicubic_mass_upsample_is_smooth_positive_and_conservative(scale: int) -> None:
    torch.manual_seed(5)
    coarse = torch.rand(2, 1, 6, 5) * 50.0
    coarse[0, 0, 2, 3] = 0.0
    up = bicubic_mass_upsample(coarse, scale)
    assert up.shape == (2, 1, 6 * scale, 5 * scale)
    assert bool((up >= 0).all())
    torch.testing.assert_close(block_sum(up, scale), coarse, rtol=1e-5, atol=1e-5)
    block = up[0, 0, 2 * scale : 3 * scale, 3 * scale : 4 * scale]
    assert bool((block == 0).all())
    if scale > 1:
        # Smoother than the nearest upsampling: less gradient energy.
        nearest = upsample_blocks(coarse / scale**2, scale)
        assert gradient_energy(up) < gradient_energy(nearest)


# ----------------------------------------------------------------------------------- FFT


@pytest.mark.parametrize(("height", "width"), [(8, 8), (7, 9), (16, 10)])
def test_lowpass_mask_shapes_and_range(height: int, width: int) -> None:
    for name in FILTERS:
        mask = lowpass_mask(height, width, 2.0, name)
        assert mask.shape == (height, width)
        assert float(mask[height // 2, width // 2]) == pytest.approx(1.0)
        assert float(mask.max()) <= 1.0
        assert float(mask.min()) >= 0.0
    ideal = lowpass_mask(height, width, 2.0, "ideal")
    assert set(ideal.unique().tolist()) == {0.0, 1.0}
    assert float(ideal[0, 0]) == 0.0


def test_lowpass_mask_values_at_the_radius() -> None:
    centre, radius = 8, 2.0
    ideal = lowpass_mask(16, 16, radius, "ideal")
    assert float(ideal[centre + 2, centre]) == 1.0
    assert float(ideal[centre + 3, centre]) == 0.0
    butter = lowpass_mask(16, 16, radius, "butterworth", order=3)
    assert float(butter[centre + 2, centre]) == pytest.approx(0.5)
    gauss = lowpass_mask(16, 16, radius, "gaussian")
    assert float(gauss[centre, centre + 2]) == pytest.approx(math.exp(-0.5))


def test_lowpass_mask_is_isotropic_in_cycles_per_pixel() -> None:
    # On a 16 x 32 grid, offset 2 along the height and 4 along the width are both 1/8 cycle/px.
    mask = lowpass_mask(16, 32, 2.5, "gaussian")
    assert float(mask[8 + 2, 16]) == pytest.approx(float(mask[8, 16 + 4]))


def test_lowpass_mask_is_even_in_frequency() -> None:
    # m(-k) == m(k) on the FFT grid, so a filtered real field stays real.
    for height, width in [(8, 12), (9, 7)]:
        mask = lowpass_mask(height, width, 2.5, "butterworth")
        unshifted = torch.fft.ifftshift(mask, dim=(-2, -1))
        negated = torch.roll(unshifted.flip(-2, -1), shifts=(1, 1), dims=(-2, -1))
        torch.testing.assert_close(unshifted, negated)


def test_lowpass_mask_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown filter"):
        lowpass_mask(8, 8, 2.0, "box")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="radius"):
        lowpass_mask(8, 8, 0.0)


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize(("height", "width", "scale"), [(32, 48, 4), (24, 24, 8)])
def test_fft_replace_imposes_reference_low_band(
    name: str, height: int, width: int, scale: int
) -> None:
    torch.manual_seed(6)
    pred = torch.rand(2, 1, height, width, dtype=torch.float64) * 5.0
    reference = torch.rand(2, 1, height, width, dtype=torch.float64) * 5.0
    radius = lowpass_radius(height, width, scale)
    out = fft_low_pass_replace(pred, reference, radius, name)
    assert out.shape == pred.shape
    assert out.dtype == pred.dtype

    def spectrum(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fftshift(torch.fft.fft2(symmetric_extend(x)), dim=(-2, -1))

    mask = lowpass_mask(2 * height, 2 * width, 2 * radius, name, dtype=torch.float64)
    expected = mask * spectrum(reference) + (1 - mask) * spectrum(pred)
    torch.testing.assert_close(spectrum(out), expected, rtol=1e-9, atol=1e-8)
    if name == "ideal":
        inside = mask.bool()
        torch.testing.assert_close(spectrum(out)[..., inside], spectrum(reference)[..., inside])


def test_fft_replace_output_minus_reference_is_high_pass() -> None:
    torch.manual_seed(7)
    pred = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    reference = torch.rand(1, 1, 64, 64, dtype=torch.float64)
    radius = lowpass_radius(64, 64, 8)
    out = fft_low_pass_replace(pred, reference, radius)
    # Replacing again changes nothing: the low band of (out - reference) is empty.
    again = fft_low_pass_replace(out, reference, radius)
    torch.testing.assert_close(again, out)
    # Tile mean (DC) comes from the reference.
    torch.testing.assert_close(out.mean(), reference.mean())


@pytest.mark.parametrize("name", FILTERS)
def test_fft_replace_does_not_wrap_around_tile_edges(name: str) -> None:
    torch.manual_seed(8)
    size, scale = 64, 4
    reference = torch.zeros(1, 1, size, size)
    pred = torch.zeros(1, 1, size, size)
    reference[..., size // 2 :] = 2.0
    pred[..., size // 2 :] = 1.0 + torch.rand(1, 1, size, size // 2)
    radius = lowpass_radius(size, size, scale)
    padded = fft_low_pass_replace(pred, reference, radius, name, pad=True)
    naive = fft_low_pass_replace(pred, reference, radius, name, pad=False)
    left_padded = float(padded[..., :4].abs().max())
    left_naive = float(naive[..., :4].abs().max())
    # The periodic version leaks the right half onto the left edge.
    assert left_naive > 0.2
    limit = 0.05 if name == "ideal" else 1e-3  # the ideal disk rings (sinc tails)
    assert left_padded < limit
    assert left_padded < left_naive / 5


def test_fft_constraint_module_caches_masks_and_handles_sizes() -> None:
    module = FFTHardConstraint(4, "gaussian")
    for height, width in [(32, 48), (64, 64), (32, 48)]:
        pred = torch.rand(1, 1, height, width)
        reference = torch.rand(1, 1, height, width)
        out = module(pred, reference)
        radius = lowpass_radius(height, width, 4)
        torch.testing.assert_close(
            out, fft_low_pass_replace(pred, reference, radius, "gaussian"), rtol=1e-5, atol=1e-5
        )
    assert len(module._masks) == 2
    assert not list(module.state_dict())


def test_fft_constraint_module_runs_in_float32_under_autocast() -> None:
    pred = torch.rand(1, 1, 16, 16, dtype=torch.bfloat16)
    reference = torch.rand(1, 1, 16, 16, dtype=torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = FFTHardConstraint(4)(pred, reference)
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_fft_replace_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        fft_low_pass_replace(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 6), 1.0)
