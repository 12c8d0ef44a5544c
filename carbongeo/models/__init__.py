"""Downscaling network, its building blocks and the hard physical constraints."""

from carbongeo.models.blocks import (
    AuxStem,
    GlobalContextBlock,
    MultiScaleBlock,
    ResBlock,
    SFTLayer,
    TemporalEncoder,
)
from carbongeo.models.constraints import (
    FFTHardConstraint,
    MassConstraint,
    bicubic_mass_upsample,
    fft_low_pass_replace,
    lowpass_mask,
    lowpass_radius,
    mass_conserve,
    symmetric_extend,
)
from carbongeo.models.network import DSTCarbonFormer, count_parameters

__all__ = [
    "AuxStem",
    "DSTCarbonFormer",
    "FFTHardConstraint",
    "GlobalContextBlock",
    "MassConstraint",
    "MultiScaleBlock",
    "ResBlock",
    "SFTLayer",
    "TemporalEncoder",
    "bicubic_mass_upsample",
    "count_parameters",
    "fft_low_pass_replace",
    "lowpass_mask",
    "lowpass_radius",
    "mass_conserve",
    "symmetric_extend",
]
