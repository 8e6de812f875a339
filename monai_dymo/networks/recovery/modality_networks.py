"""The encoder and decoder of one modality of the MoPoE recovery network, built from its :class:`ModalitySpec`.

Images: a MONAI ``Regressor`` (strided convolutions + linear head) and ``Generator`` (linear + transposed
convolutions); clinical vectors: MONAI ``FullyConnectedNet`` MLPs. The encoder outputs ``2 * latent_dim`` values (the
Gaussian expert's two parameter vectors), the decoder maps a latent ``[n, latent_dim]`` to the raw output of
:func:`~monai_dymo.networks.recovery.modality_likelihood.output_to_mean`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets import FullyConnectedNet, Generator, Regressor
from torch import nn

from monai_dymo.networks.recovery.modality_spec import ModalitySpec

__all__ = ["ConvEncoder", "ConvDecoder", "build_modality_encoder", "build_modality_decoder"]


class ConvEncoder(Regressor):
    """MONAI ``Regressor`` whose last conv block keeps its activation (a linear head follows it)."""

    def _get_layer(self, in_channels: int, out_channels: int, strides: int, is_last: bool) -> nn.Module:
        return super()._get_layer(in_channels, out_channels, strides, False)


class ConvDecoder(Generator):
    """MONAI ``Generator`` with an activation after its input linear layer and an optional output activation."""

    def __init__(self, *args: Any, output_activation: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.linear_act = get_act_layer(self.act) if self.act is not None else nn.Identity()
        acts = {None: nn.Identity, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
        self.output_act = acts[output_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_act(self.linear(self.flatten(x)))
        return self.output_act(self.conv(self.reshape(x)))

def build_modality_encoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    """Encoder ``[n, *shape]`` -> ``[n, 2 * latent_dim]`` (a vector's input is its
    :func:`~monai_dymo.networks.recovery.modality_likelihood.encoder_input`)."""
    out = 2 * latent_dim
    if spec.is_image:
        return ConvEncoder(
            in_shape=spec.shape, out_shape=(out,), channels=spec.channels, strides=spec.strides, **spec.block_options()
        )
    in_dim = len(spec.continuous_fields) + sum(spec.categorical.values()) + spec.shape[0]
    return FullyConnectedNet(in_dim, out, list(spec.hidden), dropout=spec.dropout, act=spec.act)


def build_modality_decoder(spec: ModalitySpec, latent_dim: int) -> nn.Module:
    """Decoder ``[n, latent_dim]`` -> image means ``[n, *shape]``, or for a vector its continuous means followed by
    its categorical logits ``[n, n_cont + sum K]``."""
    if spec.is_image:
        dec_ch = tuple(spec.decoder_channels or ())
        dec_st = tuple(spec.decoder_strides or ())
        up = math.prod(dec_st)
        start = (spec.channels[-1], *(s // up for s in spec.shape[1:]))
        return ConvDecoder(
            latent_shape=(latent_dim,),
            start_shape=start,
            channels=dec_ch,
            strides=dec_st,
            output_activation=spec.output_activation,
            **spec.block_options(),
        )
    out_dim = len(spec.continuous_fields) + sum(spec.categorical.values())
    return FullyConnectedNet(latent_dim, out_dim, list(reversed(spec.hidden)), dropout=spec.dropout, act=spec.act)
