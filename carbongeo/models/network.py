"""DSTCarbonFormer: dual-stream downscaling network with hard physical constraints.

The network maps fine auxiliary rasters ``aux [B, C_aux, T, H, W]`` and coarse emissions
``coarse [B, 1, T, H/s, W/s]`` (tonnes per coarse cell) to fine emissions ``[B, 1, H, W]`` of the
centre year (tonnes per fine pixel)::

    coarse --log1p(density / value_scale)--> temporal encoder (coarse grid, attention over T)
           --nearest x s--> + fine stem(log1p of nearest and bicubic upsamplings)      main stream
    aux ----fold T into channels--> progressive stem + multi-scale dilated block       aux stream
    main = SFT(main, aux) -> residual blocks -> 2-level encoder-decoder (1/2, 1/4 resolution)
         -> SFT(main, multi-scale(aux)) -> residual blocks -> global context -> head: log-ratio r
    r = (r + log forest shares) / 2          (optional forest prior: the geometric mean of the two)
    pred = nearest_density * exp(r)          (no tanh-style cap near the cell mean)
    pred = FFT low-pass replacement by the bicubic mass-preserving upsampling   (optional)
    pred = max(pred, 0) -> exact block-sum conservation to the coarse cell      (optional)

Internally the network works in the normalised space ``log1p(x / value_scale)`` where
``value_scale`` is a typical fine-pixel emission, so the same weights serve inputs of any
magnitude; the output is in physical units. With the mass constraint on, ``pred`` within a coarse
cell is ``coarse * softmax(r)`` over the cell's pixels (up to the FFT step), i.e. the softmax
constraint of Harder et al. (2023). ``r`` is softly bounded to ``+-20`` (a factor ``e**20`` from
the cell mean, far beyond the physical maximum ``s**2``) so that realistic inputs cannot overflow
float32.

The model compiles with ``torch.compile`` as a single graph, constraint tail included, and can be
trained compiled. Inductor does not generate code for complex tensors, so the FFTs of the
frequency constraint run as regular (eager) kernels inside the graph and it warns about it. On
CPU the first call per input shape takes tens of seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from carbongeo.models.blocks import (
    AuxStem,
    GlobalContextBlock,
    MultiScaleBlock,
    ResBlock,
    SFTLayer,
    TemporalEncoder,
    conv1x1,
    conv3x3,
)
from carbongeo.models.constraints import (
    FILTERS,
    FFTHardConstraint,
    FilterName,
    MassConstraint,
    bicubic_mass_upsample,
    mass_conserve,
)
from carbongeo.models.trees import TreeEnsemble
from carbongeo.ops.blocks import block_sum, upsample_blocks

LOG_RATIO_LIMIT = 20.0
"""Soft bound on the predicted log-ratio between a fine pixel and its cell's mean density."""

FOREST_WEIGHT = 0.5
"""The forest prior's weight in the model's log-ratio (the network has the rest). On the demo
world's validation tiles the two maps' geometric mean scored a fine MAE of 39.1 t against 40.1 t
for the forest alone and 45.3 t for the network alone (log1p MAE 0.156, 0.184, 0.161)."""

FOREST_FLOOR = 1e-3
"""Added to the forest prior's values, in units of ``value_scale``, before they become shares: a
pixel the forest predicts as zero keeps a small share that the deep layers can raise."""


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _stage(channels: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels) for _ in range(depth)])


class DSTCarbonFormer(nn.Module):
    """Dual-stream spatio-temporal downscaling network for carbon emissions.

    Args:
        aux_channels: Number of auxiliary bands ``C_aux``.
        scale: Fine pixels per coarse cell side ``s``; ``H`` and ``W`` must be multiples of it.
        dim: Feature width at full resolution (a multiple of 4); the encoder-decoder uses
            ``2 * dim`` and ``4 * dim`` at half and quarter resolution.
        depth: Residual blocks per stage (after each SFT and at each encoder level).
        temporal: Years per sample ``T`` (odd); the output is the centre year ``T // 2``.
        fft_constraint: Replace the low frequencies of the prediction by those of the
            upsampled coarse field (SEN2SR). Off by default: on emissions the smooth bicubic
            low band contradicts point sources and sharp city edges, and on the demo world it
            more than doubled the validation MAE (about 115 t against 50 t after 11 epochs).
        fft_filter: Low-pass mask of the FFT constraint: ``ideal``, ``butterworth`` or
            ``gaussian``.
        mass_constraint: Make every ``s x s`` block sum exactly to its coarse cell.
        value_scale: A typical fine-pixel emission in physical units (e.g. the training mean of
            positive target pixels); sets the normalised space ``log1p(x / value_scale)``.
        forest: The size (:attr:`TreeEnsemble.size`) of a forest prior, or None for none. With
            one, a regression forest over each pixel's :meth:`forest_features` (fitted on the
            training split's fine truth by :mod:`carbongeo.training.prior`, held in the weights)
            predicts the fine map too, and the model's log-ratio is the mean of the network's
            and the forest's (:data:`FOREST_WEIGHT`): the geometric mean of the two allocations,
            mass conserved. The network is trained alone (``network_only``), so that its errors
            stay its own; their combination is what validation scores and the model predicts.

    Attributes:
        config: The constructor arguments; ``DSTCarbonFormer(**model.config)`` rebuilds the model.
    """

    def __init__(
        self,
        aux_channels: int,
        scale: int,
        *,
        dim: int = 32,
        depth: int = 2,
        temporal: int = 3,
        fft_constraint: bool = False,
        fft_filter: str = "ideal",
        mass_constraint: bool = True,
        value_scale: float = 1.0,
        forest: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if aux_channels < 1:
            raise ValueError(f"aux_channels must be >= 1, got {aux_channels}")
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        if dim < 4 or dim % 4:
            raise ValueError(f"dim must be a positive multiple of 4, got {dim}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if temporal < 1 or temporal % 2 == 0:
            raise ValueError(f"temporal must be a positive odd number, got {temporal}")
        if fft_filter not in FILTERS:
            raise ValueError(f"fft_filter must be one of {', '.join(FILTERS)}, got {fft_filter!r}")
        if not value_scale > 0:
            raise ValueError(f"value_scale must be positive, got {value_scale}")
        self.config: dict[str, Any] = {
            "aux_channels": aux_channels,
            "scale": scale,
            "dim": dim,
            "depth": depth,
            "temporal": temporal,
            "fft_constraint": fft_constraint,
            "fft_filter": fft_filter,
            "mass_constraint": mass_constraint,
            "value_scale": float(value_scale),
            "forest": dict(forest) if forest else None,
        }
        self.aux_channels = aux_channels
        self.scale = scale
        self.temporal = temporal
        self.value_scale = float(value_scale)

        self.aux_stream = AuxStem(aux_channels * temporal, dim)
        self.aux_refine = MultiScaleBlock(dim)
        self.temporal_encoder = TemporalEncoder(dim, temporal)
        self.forest = TreeEnsemble(**forest) if forest else None
        if self.forest is not None and self.forest.features != forest_feature_count(aux_channels):
            raise ValueError(
                f"a forest prior of {aux_channels} aux bands reads "
                f"{forest_feature_count(aux_channels)} features, not {self.forest.features}"
            )
        self.fine_stem = conv3x3(2, dim)

        self.sft1 = SFTLayer(dim)
        self.stage0 = _stage(dim, depth)
        self.down1 = conv3x3(dim, 2 * dim, stride=2)
        self.stage1 = _stage(2 * dim, depth)
        self.down2 = conv3x3(2 * dim, 4 * dim, stride=2)
        self.stage2 = _stage(4 * dim, depth)
        self.up2 = conv1x1(4 * dim, 2 * dim)
        self.up1 = conv1x1(2 * dim, dim)
        self.sft2 = SFTLayer(dim)
        self.stage3 = _stage(dim, depth)
        self.context = GlobalContextBlock(dim)
        self.head = nn.Sequential(conv3x3(dim, dim), nn.GELU(), conv3x3(dim, 1))
        # Start close to the upsampled coarse field, but not exactly at it, so that every
        # parameter receives a gradient from the first step.
        last = self.head[-1]
        assert isinstance(last, nn.Conv2d)
        with torch.no_grad():
            last.weight.mul_(0.1)
            if last.bias is not None:
                last.bias.zero_()

        # A per-pixel linear path from the centre year's aux bands to the log-ratio. Under the
        # mass constraint exp(w . aux) shares each cell's mass like a dasymetric map (e.g. in
        # proportion to (1 + population)^k for a log1p band). Zero at start (uniform shares);
        # training may fit it first (carbongeo.training.prior), so that the network starts
        # from that map and the deep features learn what it misses. No bias: a constant
        # log-ratio changes nothing once mass is conserved.
        self.aux_prior = nn.Conv2d(aux_channels, 1, kernel_size=1, bias=False)
        nn.init.zeros_(self.aux_prior.weight)

        filter_name = cast(FilterName, fft_filter)
        self.fft = FFTHardConstraint(scale, filter_name) if fft_constraint else None
        self.mass = MassConstraint(scale) if mass_constraint else None

    def _check_inputs(self, aux: Tensor, coarse: Tensor, factor: int = 1) -> None:
        if aux.dim() != 5 or coarse.dim() != 5:
            raise ValueError(
                "expected aux [B, C_aux, T, H, W] and coarse [B, 1, T, H/s, W/s], got "
                f"{tuple(aux.shape)} and {tuple(coarse.shape)}"
            )
        batch, channels, years, height, width = aux.shape
        if channels != self.aux_channels:
            raise ValueError(f"expected {self.aux_channels} aux channels, got {channels}")
        if years != self.temporal:
            raise ValueError(f"expected T={self.temporal} years, got {years}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        cell = self.scale * factor
        if height % cell or width % cell:
            raise ValueError(
                f"tile {height}x{width} is not a multiple of scale {self.scale} x factor {factor}"
            )
        expected = (batch, 1, years, height // cell, width // cell)
        if tuple(coarse.shape) != expected:
            raise ValueError(f"expected coarse of shape {expected}, got {tuple(coarse.shape)}")

    def forward(
        self,
        aux: Tensor,
        coarse: Tensor,
        factor: int = 1,
        allowed: Tensor | None = None,
        forest_values: Tensor | None = None,
        network_only: bool = False,
    ) -> Tensor:
        """Downscale the centre year.

        ``factor`` is how many ``s``-cells wide the cells of ``coarse`` are: 1 for the real
        coarse product (inference, fine supervision), ``k`` for the product aggregated by ``k``
        (coarse supervision). The same network serves every factor: a ``k * s`` cell is presented
        as its ``k x k`` cells of size ``s``, each holding ``1 / k**2`` of its mass (uniform
        spreading, which keeps the density), so the layers always see cells of ``s`` pixels; only
        the mass constraint changes, to blocks of ``k * s`` pixels, because only those totals
        are known. With ``factor = 1`` nothing is spread and the computation is the plain one.

        Args:
            aux: Auxiliary rasters ``[B, C_aux, T, H, W]``, normalised per band. Non-finite values
                are read as 0.
            coarse: Coarse emissions ``[B, 1, T, H/(k s), W/(k s)]`` in physical units (tonnes
                per cell of ``k s`` pixels), nodata replaced by 0 by the caller. Negative or
                non-finite values are read as 0.
            factor: ``k``, the side of a cell of ``coarse`` in cells of ``s`` pixels.
            allowed: Optional bool ``[B, 1, H, W]``: pixels that may carry emissions (False on
                hard zero classes such as water). With the mass constraint on, each block's mass
                goes to its allowed pixels only (a block with none keeps it over all pixels).
            forest_values: With a forest prior, its :meth:`forest_values` of these inputs when the
                caller has them already (validation caches them); computed here when None.
            network_only: Leave the forest prior out: the network's own map (what training fits).

        Returns:
            Fine emissions ``[B, 1, H, W]`` of year ``T // 2`` in physical units (tonnes per fine
            pixel), float32, finite and non-negative. With the mass constraint on, every
            ``k s x k s`` block sums to its cell of ``coarse`` (relative error < 1e-4) and zero
            cells give zeros.

        Raises:
            ValueError: If the shapes do not match the configuration.
        """
        self._check_inputs(aux, coarse, factor)
        s = self.scale
        aux, log_density, base, reference, known = self._prepare(aux, coarse, factor)
        with torch.autocast(device_type=coarse.device.type, enabled=False):
            fine_input = torch.log1p(torch.cat([base, reference], dim=1) / self.value_scale)

        main = upsample_blocks(self.temporal_encoder(log_density), s) + self.fine_stem(fine_input)
        aux_features = self.aux_stream(aux)

        full = self.stage0(self.sft1(main, aux_features))
        half = self.stage1(self.down1(full))
        quarter = self.stage2(self.down2(half))
        half = half + F.interpolate(
            self.up2(quarter), size=half.shape[-2:], mode="bilinear", align_corners=False
        )
        full = full + F.interpolate(
            self.up1(half), size=full.shape[-2:], mode="bilinear", align_corners=False
        )
        full = self.stage3(self.sft2(full, self.aux_refine(aux_features)))
        log_ratio = self.head(self.context(full)) + self.aux_prior(aux[:, :, self.temporal // 2])
        if self.forest is not None and not network_only:
            if forest_values is None:
                forest_values = self._forest_values(aux, log_density)
            forest_ratio = self._forest_log_ratio(forest_values.float().clamp_min(0.0), s * factor)
            log_ratio = (1 - FOREST_WEIGHT) * log_ratio.float() + FOREST_WEIGHT * forest_ratio
        return self._constrain(log_ratio, base, reference, known, s * factor, allowed)

    def prior_forward(
        self,
        aux: Tensor,
        coarse: Tensor,
        factor: int = 1,
        allowed: Tensor | None = None,
        weight: Tensor | None = None,
    ) -> Tensor:
        """The allocation of the per-pixel linear aux path alone, without the deep layers.

        The same inputs, output and constraints as :meth:`forward`, with the log-ratio reduced to
        ``aux_prior(aux)`` of the centre year: under the mass constraint each cell's mass is
        shared in proportion to ``exp(w . aux)``, a log-linear dasymetric map. It is what
        :func:`carbongeo.training.prior.fit_prior` fits before the first epoch.

        Args:
            aux: As in :meth:`forward`.
            coarse: As in :meth:`forward`.
            factor: As in :meth:`forward`.
            allowed: As in :meth:`forward`.
            weight: ``w`` shaped like ``aux_prior.weight`` ``[1, C_aux, 1, 1]``; default the
                model's own.
        """
        self._check_inputs(aux, coarse, factor)
        aux, _, base, reference, known = self._prepare(aux, coarse, factor)
        w = self.aux_prior.weight if weight is None else weight
        log_ratio = F.conv2d(aux[:, :, self.temporal // 2], w)
        return self._constrain(log_ratio, base, reference, known, self.scale * factor, allowed)

    def forest_features(self, aux: Tensor, coarse: Tensor, factor: int = 1) -> Tensor:
        """The forest prior's features of each pixel, ``[B, F, H, W]`` (see
        :func:`forest_feature_count`): the centre year's normalised aux bands, the log density
        of the pixel's ``s``-cell (as the network reads it, so a ``k s`` cell is spread evenly)
        and the aux bands averaged over that cell. Inputs as in :meth:`forward`."""
        self._check_inputs(aux, coarse, factor)
        aux, log_density, *_ = self._prepare(aux, coarse, factor)
        return self._forest_features(aux, log_density)

    def forest_values(self, aux: Tensor, coarse: Tensor, factor: int = 1) -> Tensor:
        """The forest prior's fine map ``[B, 1, H, W]`` (its raw prediction, before any mass
        constraint), inputs as in :meth:`forward`.

        Raises:
            ValueError: If the model has no forest prior.
        """
        self._check_inputs(aux, coarse, factor)
        aux, log_density, *_ = self._prepare(aux, coarse, factor)
        return self._forest_values(aux, log_density)

    def _forest_features(self, aux: Tensor, log_density: Tensor) -> Tensor:
        s = self.scale
        centre = self.temporal // 2
        pixel = aux[:, :, centre]
        cell_means = upsample_blocks(block_sum(pixel, s) / (s * s), s)
        density = upsample_blocks(log_density[:, :, centre], s)
        return torch.cat([pixel, density, cell_means], dim=1)

    def _forest_values(self, aux: Tensor, log_density: Tensor) -> Tensor:
        if self.forest is None:
            raise ValueError("this model has no forest prior")
        with torch.autocast(device_type=aux.device.type, enabled=False):
            features = self._forest_features(aux, log_density)
            batch, count, height, width = features.shape
            rows = features.permute(0, 2, 3, 1).reshape(-1, count)
            return self.forest(rows).reshape(batch, 1, height, width)

    def _forest_log_ratio(self, values: Tensor, block: int) -> Tensor:
        """Log shares of the forest's values relative to their block mean (a constant per block
        changes nothing under the mass constraint; without it the ratio keeps the cell mean)."""
        with torch.autocast(device_type=values.device.type, enabled=False):
            weights = values + FOREST_FLOOR * self.value_scale
            mean = upsample_blocks(block_sum(weights, block) / (block * block), block)
            return torch.log(weights) - torch.log(mean)

    def _prepare(
        self, aux: Tensor, coarse: Tensor, factor: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Clean inputs and the coarse fields every path needs, in float32 without autocast.

        Returns:
            ``(aux, log_density, base, reference, known)``: the finite aux; the normalised log
            density of every year on cells of ``s`` pixels; the uniform and the bicubic
            mass-preserving upsamplings of the centre year; the centre year's known totals on the
            cells of ``coarse``.
        """
        s = self.scale
        centre = self.temporal // 2
        with torch.autocast(device_type=coarse.device.type, enabled=False):
            aux = torch.nan_to_num(aux.float(), nan=0.0, posinf=0.0, neginf=0.0)
            coarse = torch.nan_to_num(coarse.float(), nan=0.0, posinf=0.0, neginf=0.0)
            coarse = coarse.clamp_min(0.0)
            known = coarse[:, :, centre]  # the totals the prediction must keep
            if factor > 1:
                coarse = upsample_blocks(coarse, factor) / (factor * factor)
            log_density = torch.log1p(coarse / (s * s * self.value_scale))
            centre_coarse = coarse[:, :, centre]
            base = upsample_blocks(centre_coarse / (s * s), s)
            reference = bicubic_mass_upsample(centre_coarse, s)
        return aux, log_density, base, reference, known

    def _constrain(
        self,
        log_ratio: Tensor,
        base: Tensor,
        reference: Tensor,
        coarse: Tensor,
        block: int,
        allowed: Tensor | None,
    ) -> Tensor:
        with torch.autocast(device_type=log_ratio.device.type, enabled=False):
            log_ratio = LOG_RATIO_LIMIT * torch.tanh(log_ratio.float() / LOG_RATIO_LIMIT)
            pred = base * torch.exp(log_ratio)
            if self.fft is not None:
                # Allocate each cell's mass by the log-ratio first: a shift of the log-ratio
                # within a block then changes nothing, so training cannot drift towards the
                # degenerate "smooth reference only" output where the tanh bound saturates and
                # gradients vanish (seen with the FFT step applied to the raw prediction).
                pred = mass_conserve(pred, coarse, block, allowed)
                pred = self.fft(pred, reference)
            pred = pred.clamp_min(0.0)
            if self.mass is not None and block == self.scale:
                pred = self.mass(pred, coarse, allowed)
            elif self.mass is not None:
                pred = mass_conserve(pred, coarse, block, allowed)
        return pred


def forest_feature_count(aux_channels: int) -> int:
    """Features of the forest prior per pixel: the aux bands, the cell's log density and the
    cell means of the aux bands."""
    return 2 * aux_channels + 1


__all__ = [
    "FOREST_FLOOR",
    "FOREST_WEIGHT",
    "LOG_RATIO_LIMIT",
    "DSTCarbonFormer",
    "count_parameters",
    "forest_feature_count",
]
