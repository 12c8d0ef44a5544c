"""Tests of carbongeo.models.ssim: the one SSIM of the loss, the validation and the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_msssim import ssim as reference_ssim

from carbongeo.models.ssim import (
    GAUSSIAN_11,
    K1,
    K2,
    UNIFORM_7,
    SsimReference,
    SsimWindow,
    reflect_indices,
    ssim_map,
)


def _images(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator, dtype=dtype) * 4.0
    y = x + 0.5 * torch.randn(shape, generator=generator, dtype=dtype)
    return x, y


def _masked_ssim_by_hand(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, data_range: float, size: int
) -> np.ndarray:
    """The report's SSIM pixel by pixel: sample statistics over the valid pixels of each window."""
    pad = size // 2
    xp, yp, mp = (np.pad(a, pad, mode="symmetric") for a in (x, y, mask))
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    out = np.full(x.shape, np.nan)
    for i, j in zip(*np.nonzero(mask), strict=True):
        keep = mp[i : i + size, j : j + size]
        a = xp[i : i + size, j : j + size][keep]
        b = yp[i : i + size, j : j + size][keep]
        n = a.size
        ddof = 1 if n > 1 else 0
        mx, my = a.mean(), b.mean()
        vx, vy = a.var(ddof=ddof), b.var(ddof=ddof)
        vxy = ((a - mx) * (b - my)).sum() / (n - ddof)
        out[i, j] = ((2 * mx * my + c1) * (2 * vxy + c2)) / (
            (mx * mx + my * my + c1) * (vx + vy + c2)
        )
    return out


# --------------------------------------------------------------------------- Gaussian (valid)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_ssim_matches_pytorch_msssim(seed: int) -> None:
    x, y = _images(seed, (3, 1, 40, 52), torch.float32)
    ours = ssim_map(x, y).mean()
    theirs = reference_ssim(x, y, data_range=1.0, size_average=True, win_size=11, win_sigma=1.5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_gaussian_ssim_matches_pytorch_msssim_with_a_data_range_and_channels() -> None:
    x, y = _images(3, (2, 3, 33, 35), torch.float64)
    x, y = 80.0 * x, 80.0 * y
    ours = ssim_map(x, y, data_range=300.0, window=GAUSSIAN_11).mean()
    theirs = reference_ssim(x, y, data_range=300.0, size_average=True)
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


def test_ssim_map_handles_images_smaller_than_the_window() -> None:
    x = torch.rand(1, 1, 8, 30)
    similarity = ssim_map(x, x)
    assert similarity.shape == (1, 1, 2, 24)  # window shrinks to 7
    torch.testing.assert_close(similarity, torch.ones_like(similarity))


def test_gaussian_window_weights() -> None:
    weights = GAUSSIAN_11.weights(11, dtype=torch.float64)
    coords = np.arange(11) - 5
    expected = np.exp(-(coords**2) / (2 * 1.5**2))
    np.testing.assert_allclose(weights.numpy(), expected / expected.sum(), rtol=1e-14)
    assert UNIFORM_7.weights(7, dtype=torch.float64).sum() == pytest.approx(1.0, abs=1e-15)


def test_the_gradient_flows_to_the_compared_field() -> None:
    x, y = _images(4, (1, 1, 24, 24), torch.float32)
    x.requires_grad_()
    (1.0 - ssim_map(x, y).mean()).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------- uniform (report)
def test_masked_uniform_ssim_matches_the_formula_by_hand() -> None:
    rng = np.random.default_rng(4)
    truth = rng.gamma(0.5, 10.0, (13, 17))
    pred = truth + rng.normal(0, 2, truth.shape)
    mask = rng.random(truth.shape) > 0.25
    mask[0:4, 0:4] = False  # a corner where windows have few or no valid pixels
    mask[2, 2] = True
    reference = SsimReference(
        torch.from_numpy(np.where(mask, truth, 0.0))[None, None],
        data_range=40.0,
        window=UNIFORM_7,
        padding="reflect",
        mask=torch.from_numpy(mask)[None, None],
        sample_covariance=True,
    )
    ours = reference.map(torch.from_numpy(pred)[None, None])[0, 0].numpy()
    expected = _masked_ssim_by_hand(pred, truth, mask, 40.0, 7)
    assert np.array_equal(np.isnan(ours), ~mask)
    np.testing.assert_allclose(ours[mask], expected[mask], rtol=1e-10)


def test_unmasked_uniform_ssim_is_the_masked_one_with_every_pixel_valid() -> None:
    x, y = _images(5, (1, 1, 12, 15), torch.float64)
    full = torch.ones_like(x, dtype=torch.bool)
    kwargs = {"data_range": 5.0, "window": UNIFORM_7, "padding": "reflect"}
    masked = ssim_map(x, y, mask=full, sample_covariance=True, **kwargs)
    plain = ssim_map(x, y, sample_covariance=True, **kwargs)
    assert plain.shape == x.shape
    torch.testing.assert_close(masked, plain, rtol=1e-12, atol=1e-12)
    by_hand = _masked_ssim_by_hand(x[0, 0].numpy(), y[0, 0].numpy(), full[0, 0].numpy(), 5.0, 7)
    np.testing.assert_allclose(plain[0, 0].numpy(), by_hand, rtol=1e-10)


def test_uniform_ssim_matches_scikit_image_on_a_full_tile() -> None:
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(4)
    truth = rng.gamma(0.5, 10.0, (24, 30))
    pred = truth + rng.normal(0, 2, truth.shape)
    data_range = float(truth.max() - truth.min())
    _, full = skimage_metrics.structural_similarity(pred, truth, data_range=data_range, full=True)
    ours = ssim_map(
        torch.from_numpy(pred)[None, None],
        torch.from_numpy(truth)[None, None],
        data_range=data_range,
        window=UNIFORM_7,
        padding="reflect",
        sample_covariance=True,
    )
    np.testing.assert_allclose(ours[0, 0].numpy(), full, atol=1e-10)


def test_masked_ssim_ignores_the_values_under_the_mask() -> None:
    rng = np.random.default_rng(5)
    truth = torch.from_numpy(rng.gamma(0.5, 10.0, (1, 1, 20, 20)))
    mask = torch.ones_like(truth, dtype=torch.bool)
    mask[..., 8:12, 8:12] = False
    kwargs = {"data_range": 50.0, "window": UNIFORM_7, "padding": "reflect", "mask": mask}
    a = ssim_map(truth + 1, truth, sample_covariance=True, **kwargs)
    noisy = torch.where(mask, truth, 1e6)
    b = ssim_map(noisy + 1, noisy, sample_covariance=True, **kwargs)
    torch.testing.assert_close(a[mask], b[mask], rtol=1e-9, atol=0.0)
    assert bool(torch.isnan(a[~mask]).all())


def test_a_batch_of_fields_against_one_reference_equals_one_at_a_time() -> None:
    x, y = _images(6, (3, 1, 14, 18), torch.float64)
    mask = torch.rand(1, 1, 14, 18, generator=torch.Generator().manual_seed(6)) > 0.2
    reference = SsimReference(y[:1], data_range=4.0, window=UNIFORM_7, padding="reflect", mask=mask)
    batch = reference.map(x)
    assert batch.shape == x.shape
    for k in range(3):
        torch.testing.assert_close(batch[k : k + 1], reference.map(x[k : k + 1]), equal_nan=True)


def test_reflect_indices_mirror_the_edge_sample_like_numpy_symmetric() -> None:
    for length, pad in [(5, 3), (4, 3), (2, 3), (1, 3)]:
        expected = np.pad(np.arange(length), pad, mode="symmetric")
        assert reflect_indices(length, pad).tolist() == expected.tolist()


# --------------------------------------------------------------------------- parameters
def test_bad_parameters_are_errors() -> None:
    with pytest.raises(ValueError, match="window"):
        SsimWindow("box", 7)
    with pytest.raises(ValueError, match="odd"):
        SsimWindow("uniform", 8)
    x = torch.rand(1, 1, 16, 16)
    with pytest.raises(ValueError, match="reflect"):
        ssim_map(x, x, mask=torch.ones_like(x, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding"):
        ssim_map(x, x, padding="same")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not match"):
        SsimReference(x, data_range=1.0).map(torch.rand(1, 1, 16, 15))
