"""An intensity-histogram token: how much of the region lies in each intensity band (first-order radiomics).

Convolutions and pooled tokens read shapes and local contrast; what some findings are is a *ratio of volumes* in
intensity bands, e.g. how much FLAIR-bright oedema surrounds how much less bright tumour, whatever the lesion's size.
The log of the fraction of the region in each band turns such a ratio into a difference, which one linear layer reads.
:class:`IntensityHistogram` computes that soft histogram over the foreground (non-zero voxels: the cohort z-scores the
brain with ``nonzero=True`` and pads with 0), and :class:`HistogramTokenEncoder` appends it, through a small MLP, as one
more token to any image token encoder's tokens. With ``num_shells > 1`` the histogram is taken in each of that many
concentric shells about the region's centre (:func:`~monai_dymo.networks.shell_pool.shell_index`): for a
lesion-centred region, how far out each band reaches (the oedema's extent against the tumour's radius).
"""

from __future__ import annotations

import torch
from torch import nn

from monai_dymo.networks.shell_pool import shell_membership

__all__ = ["IntensityHistogram", "HistogramTokenEncoder"]


class IntensityHistogram(nn.Module):
    """``[B, C, *S]`` -> ``[B, C * num_shells * num_bins]``: ``log(fraction + eps)`` of each channel's foreground voxels
    (in each shell) in each of ``num_bins`` soft (triangular) bins with centres evenly spaced over ``[low, high]``;
    values outside the range count in the first / last bin. A sample (shell) without foreground gives ``log(eps)``.

    Args:
        num_bins: number of bins, >= 2.
        low, high: centres of the first and last bins (intensity units after normalisation; z-scores by default).
        eps: added to the fractions before the log.
        num_shells: 1: one histogram of the whole grid; more: one per concentric shell about the grid's centre, from
            the centre out.
    """

    def __init__(self, num_bins: int = 16, low: float = -3.0, high: float = 6.0, eps: float = 1e-3,
                 num_shells: int = 1) -> None:
        super().__init__()
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}.")
        if int(num_shells) < 1:
            raise ValueError(f"num_shells must be >= 1, got {num_shells}.")
        if not float(high) > float(low):
            raise ValueError(f"the histogram range must have high > low, got low={low}, high={high}.")
        self.num_shells = int(num_shells)
        self.num_bins = int(num_bins)
        self.width = (float(high) - float(low)) / (self.num_bins - 1)
        self.low = float(low)
        self.high = float(high)
        self.eps = float(eps)
        self.register_buffer("centres", torch.linspace(float(low), float(high), self.num_bins), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *S]`` -> ``[B, C * num_shells * num_bins]``."""
        flat = x.flatten(2)  # [B, C, N]
        fg = (flat != 0).to(flat.dtype)
        v = flat.clamp(self.low, self.high).unsqueeze(2)  # [B, C, 1, N]
        weight = (1.0 - (v - self.centres.to(flat.dtype)[None, None, :, None]).abs() / self.width).clamp_min(0.0)
        weight = weight * fg.unsqueeze(2)  # [B, C, K, N]
        member = shell_membership([int(s) for s in x.shape[2:]], self.num_shells, x.device, flat.dtype)  # [N, S]
        counts = torch.matmul(weight, member)  # [B, C, K, S]
        total = torch.matmul(fg, member).unsqueeze(2)  # [B, C, 1, S]
        frac = counts / total.clamp_min(1.0)
        return torch.log(frac + self.eps).transpose(2, 3).flatten(1)


class HistogramTokenEncoder(nn.Module):
    """A token encoder plus one token from the image's intensity histogram: ``[B, C, *S]`` -> ``[B, n + 1, dim]``.

    With ``encoder=None`` the histogram token is the only token (``[B, 1, dim]``): a first-order-radiomics encoder
    with no convolution, for cohorts too small for a convolutional encoder to learn without memorising.

    Args:
        encoder: any image token encoder (``[B, C, *S]`` -> ``[B, n, dim]``) with ``in_channels`` and ``dim``
            attributes, or ``None``.
        num_bins, low, high, num_shells: see :class:`IntensityHistogram`.
        in_channels, dim, spatial_dims: the input channels, token width and spatial dimensions when ``encoder`` is
            ``None`` (otherwise read from the encoder).
    """

    def __init__(self, encoder: nn.Module | None, num_bins: int = 16, low: float = -3.0, high: float = 6.0,
                 num_shells: int = 1, in_channels: int = 1, dim: int = 0, spatial_dims: int = 3) -> None:
        super().__init__()
        self.encoder = encoder
        self.in_channels = int(getattr(encoder, "in_channels", in_channels))
        self.dim = int(getattr(encoder, "dim", dim))
        if self.dim < 1:
            raise ValueError("HistogramTokenEncoder needs a positive token width: an encoder with a `dim` attribute, "
                             "or `dim` when `encoder` is None.")
        self.spatial_dims = int(getattr(encoder, "spatial_dims", spatial_dims))
        inner_tokens = 0 if encoder is None else getattr(encoder, "num_tokens", None)
        self.num_tokens: int | None = None if inner_tokens is None else int(inner_tokens) + 1
        self.histogram = IntensityHistogram(num_bins, low, high, num_shells=num_shells)
        features = self.in_channels * int(num_shells) * int(num_bins)
        self.to_token = nn.Sequential(nn.Linear(features, self.dim), nn.GELU(), nn.Linear(self.dim, self.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hist = self.to_token(self.histogram(x)).unsqueeze(1)
        if self.encoder is None:
            return hist
        return torch.cat([self.encoder(x), hist], dim=1)
