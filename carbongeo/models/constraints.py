"""Hard constraints that tie a fine prediction to its coarse emission field.

Two constraints are provided, as pure functions and as ``nn.Module`` wrappers:

* an SEN2SR-style frequency constraint (Aybar et al., 2026) that replaces the prediction's low
  frequencies by those of a reference upsampled from the coarse field;
* an exact block-sum (mass) constraint in the spirit of the softmax / multiplicative constraint
  layers of Harder et al. (JMLR 2023): the fine values of each ``scale x scale`` block are
  redistributed so that they sum to the coarse cell.

Every function works on tensors shaped ``[..., H, W]`` (typically ``[B, 1, H, W]``) whose fine
grid is ``scale`` times the coarse grid; the block operations come from
:mod:`carbongeo.ops.blocks`. The functions compute in the dtype they are given; call
them with float32 (or float64) tensors for the documented accuracy. The modules cast to float32
and disable autocast themselves.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carbongeo.ops.blocks import block_max, block_shape, block_sum, upsample_blocks

FilterName = Literal["ideal", "butterworth", "gaussian"]

FILTERS: tuple[str, ...] = ("ideal", "butterworth", "gaussian")


def _check_coarse(fine: Tensor, coarse: Tensor, scale: int) -> None:
    if fine.dim() < 2:
        raise ValueError(f"expected a tensor shaped [..., H, W], got shape {tuple(fine.shape)}")
    h, w = block_shape(fine.shape[-2], fine.shape[-1], scale)
    if coarse.shape[-2:] != (h, w):
        raise ValueError(
            f"coarse field is {tuple(coarse.shape[-2:])} but a fine field of "
            f"{tuple(fine.shape[-2:])} at scale {scale} needs {(h, w)}"
        )


def mass_conserve(
    pred: Tensor, coarse: Tensor, scale: int, allowed: Tensor | None = None
) -> Tensor:
    """Redistribute a fine prediction so that every block sums exactly to its coarse cell.

    Within each ``scale x scale`` block the output is ``w * coarse / sum_block(w)`` with
    ``w = max(pred, 0)``: the prediction only decides how the cell's mass is shared between its
    pixels. Where a block of ``w`` is all zero (or underflows) but the cell is not, the cell is
    spread uniformly; a zero cell gives zeros. ``NaN`` in ``pred`` counts as 0 and ``+inf`` as the
    largest finite value, so the output is finite whenever ``coarse`` is. Each block is divided by
    its maximum before summing, so predictions up to the dtype's largest value neither overflow nor
    lose precision. With float32 inputs the relative block-sum error is about 1e-6.

    The output is non-negative when ``coarse`` is; a negative cell keeps its (negative) total.
    ``NaN`` in a coarse cell only affects that cell's block. Gradients are finite everywhere.

    Works on any ``[..., H, W]`` prediction, e.g. a model output, a mosaic or a baseline map
    ``[B, 1, H, W]`` with its coarse field ``[B, 1, H / scale, W / scale]``.

    With ``allowed`` (hard zero-emission pixels such as water are False), only the allowed pixels
    of a block share its mass and the others get 0; a block without any allowed pixel keeps its
    mass over all its pixels (the rule of :func:`carbongeo.ops.mass.mass_carriers`).

    Args:
        pred: Fine prediction, linear units, shaped ``[..., H, W]``.
        coarse: Coarse totals (same units summed over a block), shaped ``[..., H/scale, W/scale]``.
        scale: Block size in fine pixels.
        allowed: bool ``[..., H, W]`` (broadcastable to ``pred``), pixels that may carry mass;
            None: all.

    Returns:
        The conserved prediction, same shape and dtype as ``pred``.

    Raises:
        ValueError: If the shapes do not match the scale.
    """
    _check_coarse(pred, coarse, scale)
    finfo = torch.finfo(pred.dtype)
    weights = torch.nan_to_num(pred, nan=0.0, posinf=finfo.max, neginf=0.0).clamp_min(0.0)
    carriers = None
    if allowed is not None:
        allowed = allowed.to(torch.bool).expand_as(pred)
        stranded = block_sum(allowed.to(pred.dtype), scale) == 0
        carriers = allowed | upsample_blocks(stranded, scale)
        weights = torch.where(carriers, weights, torch.zeros_like(weights))
    # The result does not change when a block is rescaled, so detaching the peak is exact.
    peak = block_max(weights, scale).detach()
    usable = peak > finfo.tiny
    peak = torch.where(usable, peak, torch.ones_like(peak))
    normalised = weights / upsample_blocks(peak, scale)
    total = block_sum(normalised, scale)  # in [1, scale**2] where usable
    total = torch.where(usable, total, torch.ones_like(total))
    coarse = coarse.to(pred.dtype)
    ratio = torch.where(usable, coarse / total, torch.zeros_like(coarse))
    if carriers is None:
        uniform = upsample_blocks(coarse / (scale * scale), scale)
    else:
        shares = carriers.to(pred.dtype) / upsample_blocks(
            block_sum(carriers.to(pred.dtype), scale), scale
        )
        uniform = shares * upsample_blocks(coarse, scale)
    return torch.where(
        upsample_blocks(usable, scale), normalised * upsample_blocks(ratio, scale), uniform
    )


def bicubic_mass_upsample(coarse: Tensor, scale: int) -> Tensor:
    """Smooth, non-negative, mass-preserving upsampling of a coarse total field.

    The per-pixel density ``coarse / scale**2`` is upsampled bicubically, clamped at zero and then
    projected with :func:`mass_conserve`, so every block sums exactly to its coarse cell and zero
    cells stay zero.

    Args:
        coarse: Coarse totals shaped ``[B, C, h, w]``.
        scale: Upsampling factor.

    Returns:
        The fine field shaped ``[B, C, h * scale, w * scale]``, in units per fine pixel.
    """
    if coarse.dim() != 4:
        raise ValueError(f"expected coarse shaped [B, C, h, w], got {tuple(coarse.shape)}")
    density = coarse / (scale * scale)
    if scale == 1:
        return density
    smooth = F.interpolate(density, scale_factor=scale, mode="bicubic", align_corners=False)
    return mass_conserve(smooth, coarse, scale)


def lowpass_radius(height: int, width: int, scale: int) -> float:
    """Cutoff radius of the frequency constraint: the coarse grid's Nyquist frequency.

    Args:
        height: Fine height in pixels.
        width: Fine width in pixels.
        scale: Fine pixels per coarse cell.

    Returns:
        ``min(height, width) / (2 * scale)``, in the frequency-index units of :func:`lowpass_mask`.
    """
    return min(height, width) / (2 * scale)


def lowpass_mask(
    height: int,
    width: int,
    radius: float,
    filter: FilterName = "ideal",
    order: int = 2,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Centred low-pass mask for an ``fftshift``-ed 2-D spectrum of any size.

    The distance of frequency index offset ``(u, v)`` from the centre ``(height // 2, width // 2)``
    is ``sqrt((u * m / height) ** 2 + (v * m / width) ** 2)`` with ``m = min(height, width)``, so
    ``radius`` is measured in frequency indices of the shorter side and the cutoff is isotropic in
    cycles per pixel on non-square grids.

    Args:
        height: Spectrum height.
        width: Spectrum width.
        radius: Cutoff radius (> 0).
        filter: ``"ideal"`` (1 inside the disk, 0 outside), ``"butterworth"``
            (``1 / (1 + (d / r) ** (2 * order))``) or ``"gaussian"`` (``exp(-d**2 / (2 r**2))``).
        order: Butterworth order.
        device: Device of the mask.
        dtype: Floating dtype of the mask.

    Returns:
        The mask shaped ``[height, width]``, 1 at the zero frequency.

    Raises:
        ValueError: On an unknown filter, a non-positive radius or order.
    """
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    shortest = min(height, width)
    u = (torch.arange(height, device=device, dtype=torch.float64) - height // 2) * (
        shortest / height
    )
    v = (torch.arange(width, device=device, dtype=torch.float64) - width // 2) * (shortest / width)
    dist2 = u[:, None] ** 2 + v[None, :] ** 2
    if filter == "ideal":
        mask = (dist2 <= radius * radius).to(torch.float64)
    elif filter == "butterworth":
        mask = 1.0 / (1.0 + (dist2 / (radius * radius)) ** order)
    else:
        mask = torch.exp(-dist2 / (2.0 * radius * radius))
    return mask.to(dtype)


def symmetric_extend(x: Tensor) -> Tensor:
    """Mirror a field ``[..., H, W]`` into ``[..., 2H, 2W]`` (whole-sample symmetric extension).

    The periodic continuation of the result is continuous at every border, so a Fourier filter
    applied to it does not wrap content from one tile edge onto the opposite edge.
    """
    x = torch.cat([x, x.flip(-1)], dim=-1)
    return torch.cat([x, x.flip(-2)], dim=-2)


def fft_low_pass_replace(
    pred: Tensor,
    reference: Tensor,
    radius: float,
    filter: FilterName = "ideal",
    *,
    order: int = 2,
    pad: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """Replace the low frequencies of ``pred`` by those of ``reference``.

    In the Fourier domain the output is ``M * F(reference) + (1 - M) * F(pred)``, computed as
    ``pred + ifft(M * F(reference - pred))`` with one FFT. With ``pad=True`` (the default) both
    fields are mirrored to twice their size first (see :func:`symmetric_extend`) and the result is
    cropped back, so nothing wraps around the tile edges; the radius is doubled with the size so
    the cutoff stays at the same frequency in cycles per pixel.

    Args:
        pred: Fine prediction shaped ``[..., H, W]``, linear units.
        reference: Field whose low band is imposed, same shape as ``pred``.
        radius: Cutoff radius for the unpadded size, in the units of :func:`lowpass_mask`
            (the coarse Nyquist frequency is ``min(H, W) / (2 * scale)``).
        filter: Mask shape, see :func:`lowpass_mask`.
        order: Butterworth order.
        pad: Mirror-pad before the FFT (recommended); ``False`` gives the periodic SEN2SR variant.
        mask: Optional precomputed centred mask for the (padded) FFT size; built when omitted.

    Returns:
        The constrained prediction, real, same shape as ``pred``.

    Raises:
        ValueError: If the shapes differ or the mask does not fit the FFT size.
    """
    if pred.shape != reference.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and reference {tuple(reference.shape)} differ in shape"
        )
    height, width = pred.shape[-2:]
    diff = reference - pred
    if pad:
        diff = symmetric_extend(diff)
        radius = 2.0 * radius
    fft_h, fft_w = diff.shape[-2:]
    if mask is None:
        mask = lowpass_mask(
            fft_h, fft_w, radius, filter, order, device=pred.device, dtype=pred.dtype
        )
    elif mask.shape[-2:] != (fft_h, fft_w):
        raise ValueError(f"mask is {tuple(mask.shape)} but the FFT size is {(fft_h, fft_w)}")
    spectrum = torch.fft.fftshift(torch.fft.fft2(diff), dim=(-2, -1))
    low = torch.fft.ifft2(torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))).real
    return pred + low[..., :height, :width]


class FFTHardConstraint(nn.Module):
    """SEN2SR-style low-frequency hard constraint with mirror padding and a mask cache.

    The cutoff radius is the coarse Nyquist frequency ``min(H, W) / (2 * scale)``, so the output
    keeps the coarse-resolvable content of the reference and the finer detail of the prediction.
    Masks are built for each (padded) size, device and dtype on first use and cached; they are not
    part of the state dict.

    Args:
        scale: Fine pixels per coarse cell.
        filter: ``"ideal"``, ``"butterworth"`` or ``"gaussian"``.
        order: Butterworth order.
        pad: Mirror-pad before the FFT so nothing wraps around tile edges.
    """

    def __init__(
        self, scale: int, filter: FilterName = "ideal", order: int = 2, pad: bool = True
    ) -> None:
        super().__init__()
        if filter not in FILTERS:
            raise ValueError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
        self.scale = scale
        self.filter: FilterName = filter
        self.order = order
        self.pad = pad
        self._masks: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    def _mask(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (height, width, str(device), dtype)
        mask = self._masks.get(key)
        if mask is None:
            factor = 2 if self.pad else 1
            radius = factor * lowpass_radius(height, width, self.scale)
            mask = lowpass_mask(
                factor * height,
                factor * width,
                radius,
                self.filter,
                self.order,
                device=device,
                dtype=dtype,
            )
            self._masks[key] = mask
        return mask

    def forward(self, pred: Tensor, reference: Tensor) -> Tensor:
        """Apply the constraint in float32 with autocast disabled.

        Args:
            pred: Fine prediction ``[B, C, H, W]``, linear units.
            reference: Mass-preserving upsampling of the coarse field, same shape.

        Returns:
            The constrained prediction in float32.
        """
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred = pred.float()
            reference = reference.float()
            height, width = pred.shape[-2:]
            mask = self._mask(height, width, pred.device, pred.dtype)
            radius = lowpass_radius(height, width, self.scale)
            return fft_low_pass_replace(
                pred, reference, radius, self.filter, order=self.order, pad=self.pad, mask=mask
            )

    def extra_repr(self) -> str:
        return f"scale={self.scale}, filter={self.filter!r}, order={self.order}, pad={self.pad}"


class MassConstraint(nn.Module):
    """Exact block-sum constraint: see :func:`mass_conserve`.

    Args:
        scale: Fine pixels per coarse cell.
    """

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, pred: Tensor, coarse: Tensor, allowed: Tensor | None = None) -> Tensor:
        """Conserve the coarse totals in float32 with autocast disabled.

        Args:
            pred: Fine prediction ``[B, C, H, W]``, linear units.
            coarse: Coarse totals ``[B, C, H / scale, W / scale]``.
            allowed: bool ``[B, 1, H, W]``, pixels that may carry mass (None: all).

        Returns:
            The conserved prediction in float32, non-negative where ``coarse`` is.
        """
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return mass_conserve(pred.float(), coarse.float(), self.scale, allowed)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
