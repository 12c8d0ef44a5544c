"""Tests of the hybrid loss."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from carbongeo.models.losses import TERMS, HybridLoss
from carbongeo.ops.blocks import block_sum

SCALE = 4
VALUE_SCALE = 20.0

MaskFactory = Callable[[torch.Tensor], torch.Tensor]


def sparse_target(seed: int = 0, batch: int = 2, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(batch, 1, size, size, generator=generator) * 100.0
    keep = torch.rand(batch, 1, size, size, generator=generator) > 0.4
    return values * keep


def full_mask(target: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(target, dtype=torch.bool)


def partial_mask(target: torch.Tensor) -> torch.Tensor:
    mask = full_mask(target)
    mask[0, 0, :6, :] = False
    mask[1, 0, 10:13, 20:27] = False
    return mask


def make_loss(**kwargs: float) -> HybridLoss:
    return HybridLoss(SCALE, value_scale=VALUE_SCALE, high_threshold=60.0, **kwargs)


def perturbed(target: torch.Tensor, amplitude: float, seed: int = 1) -> torch.Tensor:
    """A fixed error pattern scaled by ``amplitude``: multiplicative noise plus positive offsets."""
    generator = torch.Generator().manual_seed(seed)
    factor = torch.rand(target.shape, generator=generator) * 2.0 - 1.0
    offset = torch.rand(target.shape, generator=generator) * 30.0
    return target * (1.0 + 0.9 * amplitude * factor) + amplitude * offset


def test_terms_have_the_contract_keys_and_total_is_the_weighted_sum() -> None:
    target = sparse_target()
    pred = perturbed(target, 0.5)
    weights = {"pixel": 1.0, "ssim": 0.3, "edge": 0.2, "consistency": 0.7, "tv": 0.05}
    loss = make_loss(**weights)
    total, terms = loss(pred, target, block_sum(target, SCALE), full_mask(target))
    assert tuple(terms) == TERMS == ("pixel", "ssim", "edge", "consistency", "tv")
    expected = sum(weights[name] * terms[name] for name in TERMS)
    torch.testing.assert_close(total, expected)
    assert total.dim() == 0


@pytest.mark.parametrize("make_mask", [full_mask, partial_mask])
def test_every_term_is_zero_on_identical_inputs(make_mask: MaskFactory) -> None:
    target = sparse_target()
    total, terms = make_loss()(target.clone(), target, block_sum(target, SCALE), make_mask(target))
    for name in TERMS:
        assert float(terms[name]) == pytest.approx(0.0, abs=1e-6), name
    assert float(total) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make_mask", [full_mask, partial_mask])
def test_every_term_grows_with_the_error(make_mask: MaskFactory) -> None:
    target = sparse_target()
    coarse = block_sum(target, SCALE)
    mask = make_mask(target)
    loss = make_loss()
    history: dict[str, list[float]] = {name: [] for name in TERMS}
    for amplitude in (0.0, 0.05, 0.2, 0.5, 1.0):
        _, terms = loss(perturbed(target, amplitude), target, coarse, mask)
        for name in TERMS:
            history[name].append(float(terms[name]))
    for name, values in history.items():
        assert values[0] == pytest.approx(0.0, abs=1e-6), name
        assert all(b > a for a, b in zip(values, values[1:], strict=False)), (name, values)


@pytest.mark.parametrize("fill", [float("nan"), 1e9, 0.0])
def test_nodata_pixels_do_not_change_the_loss(fill: float) -> None:
    target = sparse_target()
    pred = perturbed(target, 0.3)
    coarse = block_sum(target, SCALE)
    mask = partial_mask(target)
    loss = make_loss()
    total, terms = loss(pred, target, coarse, mask)

    wild_target = target.clone()
    wild_target[~mask] = fill
    wild_pred = pred.clone()
    wild_pred[~mask] = torch.rand(int((~mask).sum())) * 1e6
    wild_pred.requires_grad_(True)
    wild_total, wild_terms = loss(wild_pred, wild_target, coarse, mask)

    assert torch.equal(total, wild_total.detach())
    for name in TERMS:
        assert torch.equal(terms[name], wild_terms[name]), name
    wild_total.backward()
    assert wild_pred.grad is not None
    assert bool(torch.isfinite(wild_pred.grad).all())
    assert bool((wild_pred.grad[~mask] == 0).all())
    assert float(wild_pred.grad[mask].abs().sum()) > 0


def test_fully_masked_batch_gives_a_finite_zero_loss() -> None:
    target = torch.full((1, 1, 16, 16), float("nan"))
    pred = torch.rand(1, 1, 16, 16, requires_grad=True)
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    total, terms = make_loss()(pred, target, torch.rand(1, 1, 4, 4), mask)
    assert float(total.detach()) == 0.0
    assert all(float(value) == 0.0 for value in terms.values())
    total.backward()
    assert pred.grad is not None
    assert bool((pred.grad == 0).all())


def test_high_emission_pixels_weigh_more_in_the_pixel_term() -> None:
    target = sparse_target()
    pred = target.clone()
    high = target > 60.0
    pred[high] = target[high] * 0.5
    coarse = block_sum(target, SCALE)
    mask = full_mask(target)
    _, weighted = HybridLoss(SCALE, value_scale=VALUE_SCALE, high_threshold=60.0)(
        pred, target, coarse, mask
    )
    _, plain = HybridLoss(SCALE, value_scale=VALUE_SCALE, high_threshold=None)(
        pred, target, coarse, mask
    )
    assert float(weighted["pixel"]) > 2.0 * float(plain["pixel"])


def test_consistency_is_the_relative_block_sum_error_on_complete_blocks() -> None:
    target = torch.full((1, 1, 8, 8), 2.0)
    coarse = block_sum(target, SCALE)  # 32 per cell
    pred = target.clone()
    pred[..., :4, :4] = 3.0  # top-left cell sums to 48: error 16
    pred[..., 4:, 4:] = 1.0  # bottom-right cell sums to 16: error 16
    mask = full_mask(target)
    mask[..., 7, 7] = False  # the bottom-right block is incomplete and ignored
    loss = HybridLoss(SCALE, value_scale=1.0)
    _, terms = loss(pred, target, coarse, mask)
    floor = 1.0 * SCALE * SCALE
    expected = (16.0 / (32.0 + floor) + 0.0 + 0.0) / 3.0
    assert float(terms["consistency"]) == pytest.approx(expected, rel=1e-6)


def test_excess_tv_ignores_structure_present_in_the_target() -> None:
    target = torch.zeros(1, 1, 16, 16)
    target[..., ::2, :] = 50.0  # strong stripes
    smoother = target * 0.5
    _, terms = make_loss()(smoother, target, block_sum(target, SCALE), full_mask(target))
    assert float(terms["tv"]) == 0.0
    assert float(terms["pixel"]) > 0.0


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="value_scale"):
        HybridLoss(4, value_scale=0.0)
    with pytest.raises(ValueError, match="'tv'"):
        HybridLoss(4, tv=-1.0)
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        HybridLoss(4)(
            torch.rand(1, 1, 8, 8),
            torch.rand(1, 1, 8, 4),
            torch.rand(1, 1, 2, 2),
            torch.ones(1, 1, 8, 8, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="coarse must be"):
        HybridLoss(4)(
            torch.rand(1, 1, 8, 8),
            torch.rand(1, 1, 8, 8),
            torch.rand(1, 1, 1, 1),
            torch.ones(1, 1, 8, 8, dtype=torch.bool),
        )


def test_coarse_level_loss_compares_cell_sums_with_the_product() -> None:
    from carbongeo.models.losses import CoarseLevelLoss

    scale = 4
    product = sparse_target(batch=2, size=32) * 16 + 1.0  # cells of s = 4 px: [2, 1, 32, 32]
    mask = torch.ones_like(product, dtype=torch.bool)
    coarse = block_sum(product, 2)
    loss_fn = CoarseLevelLoss(scale, (2, 4), value_scale=1.0)
    exact = torch.kron(product, torch.ones(scale, scale)) / scale**2
    total, terms = loss_fn(exact, product, coarse, mask, 2)
    assert float(total) == pytest.approx(0.0, abs=1e-6)
    # Moving mass between the cells of a 2 x 2 input cell keeps the input, changes the label fit.
    wrong = torch.kron(torch.kron(coarse, torch.ones(2, 2)) / 4, torch.ones(scale, scale)) / 16
    total, terms = loss_fn(wrong, product, coarse, mask, 2)
    assert float(terms["pixel"]) > 0.01 and float(terms["consistency"]) < 1e-6
    with pytest.raises(ValueError, match="factor 3"):
        loss_fn(exact, product, coarse, mask, 3)
