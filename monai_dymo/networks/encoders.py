"""Per-modality token encoders for the DyMo fusion transformer.

Every encoder maps one modality's batch tensor to a sequence of tokens ``[B, n_tokens, dim]`` and exposes the number of
tokens it produces as ``num_tokens`` so that the fusion network can size its positional embeddings from constructor
arguments alone (bundle-config friendly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Pool
from monai.utils import ensure_tuple_rep

from monai_dymo.networks.shell_pool import RadialShellPool

__all__ = ["ImageTokenEncoder", "ClinicalTokenEncoder"]


def _shape_str(shape: list[int]) -> str:
    """``(2, 3, 28, 28)``, as ``tuple(shape)`` prints, in a form TorchScript compiles (the encoders are scriptable)."""
    return "(" + ", ".join([str(v) for v in shape]) + ")"


def token_pool(
    pool_mode: str, pool_size: Sequence[int] | int | None, spatial_dims: int
) -> tuple[nn.Module, tuple[int, ...]]:
    """The pool that turns a last feature map into tokens, and its token grid: adaptive ``"avg"`` / ``"max"`` pooling
    to ``pool_size`` (int or one value per spatial dim), or ``"shells"``: :class:`RadialShellPool` over ``pool_size``
    (an int) concentric shells, grid ``(num_shells,)``."""
    if pool_mode == "shells":
        if pool_size is None:
            raise ValueError("pool_mode 'shells' needs pool_size, the number of shells.")
        num_shells = int(pool_size) if isinstance(pool_size, int) else int(tuple(pool_size)[0])
        return RadialShellPool(num_shells), (num_shells,)
    grid = tuple(int(p) for p in ensure_tuple_rep(pool_size, spatial_dims))
    if any(p < 1 for p in grid):
        raise ValueError(f"pool_size must be positive, got {grid}.")
    pool_type = Pool.ADAPTIVEAVG if pool_mode == "avg" else Pool.ADAPTIVEMAX
    return Pool[pool_type, spatial_dims](grid), grid


class ImageTokenEncoder(nn.Module):
    """Convolutional encoder whose final feature-map positions become tokens.

    The image ``[B, in_channels, *spatial]`` goes through a stack of MONAI ``Convolution`` blocks (or ``ResidualUnit``
    blocks when ``num_res_units > 0``), one per entry of ``channels``/``strides``, then a 1x1 convolution to ``dim``
    channels. If ``pool_size`` is given the feature map is adaptive-average-pooled to that fixed grid, so the number of
    tokens is ``prod(pool_size)`` whatever the input size (``pool_mode="max"``: adaptive max-pooling instead, as in
    the reference's PolyMNIST encoder: three stride-2 convolutions, 1x1 convolution, 2x2 max-pool); otherwise every
    position of the final feature map is a token and ``num_tokens`` is known only when ``spatial_size`` (the input
    size) is given.

    Args:
        spatial_dims: 2 or 3.
        in_channels: number of input channels.
        dim: token width ``d``.
        channels: output channels of each convolution stage.
        strides: stride of each stage (same length as ``channels``).
        kernel_size: convolution kernel size.
        num_res_units: 0 for plain ``Convolution`` blocks, otherwise the number of sub-units of each ``ResidualUnit``.
        pool_size: fixed token grid (int or one value per spatial dim); ``None`` keeps the whole feature map.
        pool_mode: ``"avg"`` (adaptive average) or ``"max"`` (adaptive max) pooling to ``pool_size``; ``"shells"``:
            the average over ``pool_size`` (an int) concentric shells about the centre of the feature map, one token
            per shell from the centre out, for lesion-centred regions of interest
            (:class:`~monai_dymo.networks.shell_pool.RadialShellPool`).
        spatial_size: input spatial size, only used to compute ``num_tokens`` when ``pool_size`` is None.
        act, norm, dropout: as in :class:`monai.networks.blocks.Convolution`.

    Example (PolyMNIST, 3x28x28 -> 16 tokens)::

        ImageTokenEncoder(2, 3, 64, channels=(32, 64), strides=(2, 2), pool_size=4)
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        dim: int,
        channels: Sequence[int] = (32, 64),
        strides: Sequence[int] = (2, 2),
        kernel_size: int = 3,
        num_res_units: int = 0,
        pool_size: Sequence[int] | int | None = 4,
        spatial_size: Sequence[int] | int | None = None,
        act: tuple | str | None = "PRELU",
        norm: tuple | str | None = "BATCH",
        dropout: float | None = None,
        pool_mode: str = "avg",
    ) -> None:
        super().__init__()
        if pool_mode not in ("avg", "max", "shells"):
            raise ValueError(f"pool_mode must be 'avg', 'max' or 'shells', got {pool_mode!r}.")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) == 0 or len(channels) != len(strides):
            raise ValueError(
                f"channels and strides must be non-empty and of equal length, got {len(channels)} and {len(strides)}."
            )
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.dim = dim
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out, s in zip(channels, strides):
            if num_res_units > 0:
                layers.append(
                    ResidualUnit(
                        spatial_dims,
                        c_in,
                        c_out,
                        strides=s,
                        kernel_size=kernel_size,
                        subunits=num_res_units,
                        act=act,
                        norm=norm,
                        dropout=dropout,
                    )
                )
            else:
                layers.append(
                    Convolution(
                        spatial_dims,
                        c_in,
                        c_out,
                        strides=s,
                        kernel_size=kernel_size,
                        act=act,
                        norm=norm,
                        dropout=dropout,
                    )
                )
            c_in = c_out
        layers.append(Convolution(spatial_dims, c_in, dim, kernel_size=1, conv_only=True))
        self.features = nn.Sequential(*layers)

        self.pool_size: tuple[int, ...] | None = None
        self.pool: nn.Module = nn.Identity()
        if pool_mode == "shells" or pool_size is not None:
            self.pool, self.pool_size = token_pool(pool_mode, pool_size, spatial_dims)

        grid: tuple[int, ...] | None = self.pool_size
        if grid is None and spatial_size is not None:
            size = [int(v) for v in ensure_tuple_rep(spatial_size, spatial_dims)]
            for s in strides:  # "same" padding: out = ceil(in / stride)
                size = [math.ceil(v / s) for v in size]
            grid = tuple(size)
        # tokens per image (None when it depends on the input size and spatial_size was not given); a plain
        # attribute rather than a property so that TorchScript (``torch.jit.script``, MONAI's ckpt_export) compiles
        # the encoder
        self.num_tokens: int | None = None if grid is None else math.prod(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, *spatial]`` -> tokens ``[B, n_tokens, dim]``."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected an image batch [B, {self.in_channels}, " + ", ".join(["S"] * self.spatial_dims) + "], "
                f"found shape {_shape_str(x.shape)}."
            )
        feat = self.pool(self.features(x))
        return feat.flatten(2).transpose(1, 2)


class ClinicalTokenEncoder(nn.Module):
    """Field tokenizer for a group of clinical (tabular) fields: one token per field.

    Input convention: one float tensor ``x [B, F]``, ``F = num_continuous + len(categorical_cardinalities)``, the
    continuous fields first (already standardised), then the categorical fields as integer codes stored as floats:

    - continuous field ``j``: token ``x[:, j] * w_j + b_j`` (its own learned linear embedding of the value);
    - categorical field ``k`` with cardinality ``n_k``: codes ``0 .. n_k - 1`` index that field's own embedding rows;
      code ``-1`` means "unknown category" and selects an extra learned row of that field;
    - a **missing** field (``NaN`` in ``x``, or ``False`` in the optional ``mask``) gets a learned per-field "missing"
      embedding instead, so data pipelines only need to write ``NaN`` for absent values.

    Any other categorical value (non-integer, ``< -1`` or ``>= n_k``) raises ``ValueError``.

    Args:
        num_continuous: number of continuous fields.
        categorical_cardinalities: number of categories of each categorical field.
        dim: token width ``d``.
    """

    def __init__(self, num_continuous: int, categorical_cardinalities: Sequence[int] = (), dim: int = 64) -> None:
        super().__init__()
        cards = [int(c) for c in categorical_cardinalities]
        if num_continuous < 0 or any(c < 1 for c in cards):
            raise ValueError(
                f"num_continuous must be >= 0 and every cardinality >= 1, got {num_continuous} and {cards}."
            )
        if num_continuous + len(cards) == 0:
            raise ValueError("ClinicalTokenEncoder needs at least one field.")
        self.num_continuous = int(num_continuous)
        self.categorical_cardinalities = tuple(cards)
        self.num_fields = self.num_continuous + len(cards)
        self.dim = dim
        self.cont_weight = nn.Parameter(torch.randn(self.num_continuous, dim) * 0.02)
        self.cont_bias = nn.Parameter(torch.zeros(self.num_continuous, dim))
        # each categorical field owns n_k + 1 rows: its categories, then "unknown"
        offsets = torch.tensor([0] + [c + 1 for c in cards], dtype=torch.int64).cumsum(0)
        self.register_buffer("cat_offsets", offsets[:-1].clone(), persistent=False)
        self.register_buffer("cat_cardinalities", torch.tensor(cards, dtype=torch.int64), persistent=False)
        self.cat_embedding = nn.Embedding(max(int(offsets[-1]), 1), dim)
        nn.init.normal_(self.cat_embedding.weight, std=0.02)
        self.missing_embedding = nn.Parameter(torch.randn(self.num_fields, dim) * 0.02)

    @property
    def num_tokens(self) -> int:
        """One token per field."""
        return self.num_fields

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, F]`` (+ optional ``mask`` BoolTensor ``[B, F]``, True = present) -> tokens ``[B, F, dim]``."""
        if x.ndim != 2 or x.shape[1] != self.num_fields:
            raise ValueError(f"expected clinical fields [B, {self.num_fields}], found shape {_shape_str(x.shape)}.")
        x = x.to(self.cont_weight.dtype)
        present = ~torch.isnan(x)
        if mask is not None:
            if mask.shape != x.shape:
                raise ValueError(f"field mask must have shape {_shape_str(x.shape)}, found {_shape_str(mask.shape)}.")
            present = present & mask.to(torch.bool)
        values = torch.where(present, x, torch.zeros_like(x))
        parts: list[torch.Tensor] = []
        if self.num_continuous > 0:
            cont = values[:, : self.num_continuous, None]
            parts.append(cont * self.cont_weight + self.cont_bias)
        if len(self.categorical_cardinalities) > 0:
            codes_f = values[:, self.num_continuous :]
            codes = codes_f.round().to(torch.int64)
            cards = self.cat_cardinalities
            bad = present[:, self.num_continuous :] & (
                (codes_f != codes.to(codes_f.dtype)) | (codes < -1) | (codes >= cards)
            )
            if bad.any():
                first = bad.nonzero()[0]
                b, k = int(first[0]), int(first[1])
                raise ValueError(
                    f"sample {b}: categorical field {k} (column {self.num_continuous + k}) has value "
                    f"{float(codes_f[b, k])}, expected an integer code in [0, {int(cards[k]) - 1}] or -1 (unknown)."
                )
            codes = torch.where(codes < 0, cards.expand_as(codes), codes)  # -1 -> the field's "unknown" row
            parts.append(self.cat_embedding(codes + self.cat_offsets))
        tokens = torch.cat(parts, dim=1)
        return torch.where(present[..., None], tokens, self.missing_embedding.to(tokens.dtype).expand_as(tokens))
