"""Structural similarity (SSIM, Wang et al. 2004) in torch: one implementation for every use.

The local SSIM of a field ``x`` against a reference ``y`` is

``(2 mu_x mu_y + C1) / (mu_x**2 + mu_y**2 + C1) * (2 cov_xy + C2) / (var_x + var_y + C2)``

with ``C1 = (K1 L)**2``, ``C2 = (K2 L)**2`` (``K1 = 0.01``, ``K2 = 0.03``, ``L`` the data range)
and the means, variances and covariance taken over a window around each position. What varies
between uses is a parameter:

* the window (:class:`SsimWindow`): Gaussian (size 11, sigma 1.5, as ``pytorch_msssim``) or
  uniform (size 7, as scikit-image's ``structural_similarity``), applied separably;
* the edges: ``"valid"`` keeps only the windows that fit inside the field (the output shrinks
  by ``size - 1``), ``"reflect"`` mirrors the field about its edges (scipy's ``reflect``, the
  edge pixel repeated) and keeps its size;
* a mask: the statistics of each window use only its masked pixels, so nodata never enters as a
  fake value (``"reflect"`` edges only); positions outside the mask are NaN;
* the covariance: population (``/ n``) or sample (``/ (n - 1)``, as scikit-image).

Users: the training loss (:mod:`carbongeo.models.losses`, Gaussian, valid, in log1p space), the
validation metric ``ssim_gauss11`` (:mod:`carbongeo.evaluation.metrics`, Gaussian, valid, on
physical values) and the evaluation report's ``ssim`` (uniform 7 x 7, reflect, masked, sample
covariance, float64).

Everything is computed in the dtype of the inputs, the window weights included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GAUSSIAN_11",
    "K1",
    "K2",
    "UNIFORM_7",
    "Padding",
    "SsimReference",
    "SsimWindow",
    "reflect_indices",
    "ssim_map",
]

K1 = 0.01
K2 = 0.03

Padding = Literal["valid", "reflect"]
_PADDINGS: tuple[str, ...] = ("valid", "reflect")
_WEIGHT_FLOOR = 1e-12
"""Windows whose masked share is below this have no valid pixel (the share is a rounded sum)."""


@dataclass(frozen=True)
class SsimWindow:
    """A separable SSIM window.

    Attributes:
        kind: ``"gaussian"`` or ``"uniform"``.
        size: Odd side in pixels.
        sigma: Standard deviation of the Gaussian, in pixels (unused for ``"uniform"``).
    """

    kind: Literal["gaussian", "uniform"] = "gaussian"
    size: int = 11
    sigma: float = 1.5

    def __post_init__(self) -> None:
        if self.kind not in ("gaussian", "uniform"):
            raise ValueError(f"unknown SSIM window {self.kind!r}; choose gaussian or uniform")
        if self.size < 1 or self.size % 2 == 0:
            raise ValueError(f"the SSIM window size must be odd and positive, got {self.size}")
        if self.kind == "gaussian" and not self.sigma > 0:
            raise ValueError(f"the Gaussian sigma must be positive, got {self.sigma}")

    def weights(
        self, size: int, *, dtype: torch.dtype, device: torch.device | None = None
    ) -> Tensor:
        """The normalised 1-D weights ``[size]`` (``size`` may be below :attr:`size`)."""
        if self.kind == "uniform":
            return torch.full((size,), 1.0 / size, dtype=dtype, device=device)
        coords = torch.arange(size, dtype=dtype, device=device) - size // 2
        window = torch.exp(-(coords * coords) / (2.0 * self.sigma * self.sigma))
        return window / window.sum()


GAUSSIAN_11 = SsimWindow("gaussian", 11, 1.5)
"""The window of Wang et al. and of ``pytorch_msssim``."""

UNIFORM_7 = SsimWindow("uniform", 7)
"""The default window of scikit-image's ``structural_similarity``."""


def reflect_indices(length: int, pad: int, *, device: torch.device | None = None) -> Tensor:
    """Indices that extend an axis of ``length`` by ``pad`` on each side, mirrored about its edges.

    The edge sample is repeated (``d c b a | a b c d | d c b a``, scipy's ``reflect`` and
    numpy's ``symmetric``), and the pattern repeats for pads longer than the axis.
    """
    positions = torch.arange(-pad, length + pad, device=device) % (2 * length)
    return torch.where(positions < length, positions, 2 * length - 1 - positions)


class SsimReference:
    """The reference side of an SSIM: the local statistics of ``y``, computed once.

    :meth:`map` then gives the SSIM map of any field against it (several predictions against one
    truth cost the reference's filtering once). See the module docstring for the parameters.

    Args:
        y: Reference ``[B, C, H, W]``.
        data_range: ``L`` in ``C1 = (K1 L)**2`` and ``C2 = (K2 L)**2``.
        window: The window.
        padding: ``"valid"`` or ``"reflect"``. With ``"valid"`` a window larger than the field
            shrinks to the largest odd size that fits.
        mask: Optional bool ``[B, C, H, W]``, the pixels the statistics may use (``y`` and the
            fields to compare need not be finite elsewhere); needs ``"reflect"``.
        sample_covariance: Scale the (co)variances by ``n / (n - 1)`` with ``n`` the pixels of the
            window (its valid pixels under a mask; windows with one pixel are left unscaled).

    Raises:
        ValueError: On an unknown padding, a mask with ``"valid"`` padding, or a mask whose shape
            is not the reference's.
    """

    def __init__(
        self,
        y: Tensor,
        *,
        data_range: float,
        window: SsimWindow = GAUSSIAN_11,
        padding: Padding = "valid",
        mask: Tensor | None = None,
        sample_covariance: bool = False,
    ) -> None:
        if padding not in _PADDINGS:
            raise ValueError(f"unknown SSIM padding {padding!r}; choose valid or reflect")
        if y.dim() != 4:
            raise ValueError(f"expected a reference shaped [B, C, H, W], got {tuple(y.shape)}")
        height, width = y.shape[-2:]
        size = window.size
        if padding == "valid":
            size = min(size, height, width)
            size = size if size % 2 else size - 1
        self.size = size
        self.c1 = (K1 * data_range) ** 2
        self.c2 = (K2 * data_range) ** 2
        # A uniform window is a box mean (a sum of shifted slices divided by the size, as scipy's
        # uniform_filter): a float64 convolution takes a slow path on the CPU.
        self._box = window.kind == "uniform"
        self._groups = y.shape[1]
        # Indexed by the filtered dim: -2 the height (vertical kernel), -1 the width.
        self._kernels: tuple[Tensor, Tensor] | None = None
        if not self._box:
            weights = window.weights(size, dtype=y.dtype, device=y.device)
            self._kernels = (
                weights.reshape(1, 1, size, 1).expand(self._groups, 1, size, 1),
                weights.reshape(1, 1, 1, size).expand(self._groups, 1, 1, size),
            )
        self._rows: Tensor | None = None
        self._cols: Tensor | None = None
        if padding == "reflect":
            self._rows = reflect_indices(height, size // 2, device=y.device)
            self._cols = reflect_indices(width, size // 2, device=y.device)

        self.mask = mask
        self._inv: Tensor | None = None
        self._cov_norm: Tensor | float | None = None
        if mask is not None:
            if padding != "reflect":
                raise ValueError("a masked SSIM needs padding='reflect'")
            if mask.shape != y.shape:
                raise ValueError(f"mask {tuple(mask.shape)} does not match {tuple(y.shape)}")
            self.mask = mask.bool()
            y = torch.where(self.mask, y, 0.0)
            share = self._blur(self.mask.to(y.dtype))
            self._inv = torch.where(share > _WEIGHT_FLOOR, 1.0 / share, 0.0)
            if sample_covariance:
                n = share * (size * size)
                self._cov_norm = torch.where(n > 1.5, n / (n - 1.0), 1.0)
        elif sample_covariance and size > 1:
            n = float(size * size)
            self._cov_norm = n / (n - 1.0)
        self.y = y
        self.mu_y = self._mean(y)
        self.var_y = self._scaled(self._mean(y * y) - self.mu_y * self.mu_y)

    def _blur(self, z: Tensor) -> Tensor:
        """The window filter, separable: along the width, then along the height."""
        if self._cols is not None:
            z = z.index_select(-1, self._cols)
        z = self._filter(z, -1)
        if self._rows is not None:
            z = z.index_select(-2, self._rows)
        return self._filter(z, -2)

    def _filter(self, z: Tensor, dim: int) -> Tensor:
        """The 1-D window along ``dim`` at every 'valid' position."""
        if self._kernels is not None:
            return F.conv2d(z, self._kernels[dim], groups=self._groups)
        length = z.shape[dim] - self.size + 1
        total = z.narrow(dim, 0, length)
        for offset in range(1, self.size):
            total = total + z.narrow(dim, offset, length)
        return total / self.size

    def _mean(self, z: Tensor) -> Tensor:
        """Local mean: over the window, or over its masked pixels."""
        blurred = self._blur(z)
        return blurred if self._inv is None else blurred * self._inv

    def _scaled(self, moment: Tensor) -> Tensor:
        return moment if self._cov_norm is None else self._cov_norm * moment

    def map(self, x: Tensor) -> Tensor:
        """The SSIM map of ``x`` against the reference.

        Args:
            x: ``[B, C, H, W]`` shaped like the reference, or ``[N, C, H, W]`` (several fields
                at once) against a reference with a batch of 1.

        Returns:
            ``[B, C, H, W]`` with ``"reflect"`` padding (NaN outside the mask), else
            ``[B, C, H - k + 1, W - k + 1]`` for the window size ``k`` used: position ``(i, j)``
            is centred on pixel ``(i + k // 2, j + k // 2)``.
        """
        if (
            x.dim() != 4
            or x.shape[1:] != self.y.shape[1:]
            or self.y.shape[0] not in (1, x.shape[0])
        ):
            raise ValueError(f"field {tuple(x.shape)} does not match {tuple(self.y.shape)}")
        if self.mask is not None:
            x = torch.where(self.mask, x, 0.0)
        mu_x = self._mean(x)
        mu_y = self.mu_y
        var_x = self._scaled(self._mean(x * x) - mu_x * mu_x)
        cov = self._scaled(self._mean(x * self.y) - mu_x * mu_y)
        luminance = (2.0 * mu_x * mu_y + self.c1) / (mu_x * mu_x + mu_y * mu_y + self.c1)
        structure = (2.0 * cov + self.c2) / (var_x + self.var_y + self.c2)
        similarity = luminance * structure
        if self.mask is not None:
            similarity = torch.where(self.mask, similarity, torch.nan)
        return similarity


def ssim_map(
    x: Tensor,
    y: Tensor,
    *,
    data_range: float = 1.0,
    window: SsimWindow = GAUSSIAN_11,
    padding: Padding = "valid",
    mask: Tensor | None = None,
    sample_covariance: bool = False,
) -> Tensor:
    """The local SSIM of ``x`` against ``y`` (``[B, C, H, W]``), see :class:`SsimReference`.

    With the defaults (Gaussian 11 x 11, sigma 1.5, valid edges) the mean of the map is
    ``pytorch_msssim.ssim(x, y, data_range=data_range)``.
    """
    reference = SsimReference(
        y,
        data_range=data_range,
        window=window,
        padding=padding,
        mask=mask,
        sample_covariance=sample_covariance,
    )
    return reference.map(x)
