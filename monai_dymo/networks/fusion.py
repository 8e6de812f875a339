"""The DyMo fusion network: per-modality encoders and a transformer accepting any modality subset (method section 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.data import MetaTensor

from .encoders import ImageTokenEncoder

__all__ = ["DynamicFusionTransformer", "build_image_fusion", "build_polymnist_fusion"]


class DynamicFusionTransformer(nn.Module):
    """Transformer fusion of modality tokens with subset masking (DyMo's flexible fusion network ``F``).

    ``encode`` runs each modality's encoder once (tokens ``[B, n_m, dim]``); ``fuse`` then evaluates any subset per row:
    tokens get a per-modality LayerNorm, tokens of modalities outside the row's subset are zeroed, a learned modality
    embedding is added to every token, a learned CLS token is prepended, learned positional embeddings are added over
    the whole sequence ``[CLS, tokens of modality 0, ..., tokens of modality M-1]``, and pre-norm transformer blocks run
    with an attention mask hiding the tokens of modalities outside the subset (CLS always visible). The final CLS state
    feeds a linear classifier (logits ``[B, C]``) and a linear projection head (``z [B, proj_dim]``, L2-normalised).

    Since hidden tokens cannot influence the CLS output, ``fuse`` only computes each row's visible tokens: they are
    gathered into a compacted sequence (CLS first), and rows with the same number of visible tokens run together, so
    no sequence carries padding; ``fuse_full`` is the straightforward full-sequence masked computation, kept as the
    reference (they agree to float tolerance).

    The transformer blocks are ``torch.nn.TransformerEncoderLayer`` (pre-norm, GELU) driven by ``src_key_padding_mask``:
    MONAI's ``TransformerBlock``/``SABlock`` take an equivalent key mask but need the optional ``einops`` package.

    Args:
        modalities: modality names, in the order of the subset masks' columns.
        encoders: one module per modality name mapping that modality's tensor to tokens ``[B, n_m, dim]``.
        num_classes: ``C``.
        dim: token width ``d`` (encoders must output it).
        depth: number of transformer blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        mlp_ratio: hidden width of the blocks' MLP, as a multiple of ``dim``.
        proj_dim: width ``D`` of the projection ``z``.
        dropout: dropout inside the transformer blocks (off in eval mode).
        num_tokens: tokens per modality; defaults to each encoder's ``num_tokens`` attribute.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        encoders: Mapping[str, nn.Module] | nn.ModuleDict,
        num_classes: int,
        dim: int,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        proj_dim: int = 64,
        dropout: float = 0.0,
        num_tokens: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(modalities, str):
            raise ValueError("modalities must be a sequence of names, not a single string.")
        self.modalities: tuple[str, ...] = tuple(str(m) for m in modalities)
        if len(self.modalities) == 0 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be non-empty and distinct, got {self.modalities}.")
        enc_names = set(encoders.keys())
        if enc_names != set(self.modalities):
            raise ValueError(
                f"encoders must be given for exactly the modalities {list(self.modalities)}: "
                f"missing {sorted(set(self.modalities) - enc_names)}, "
                f"unknown {sorted(enc_names - set(self.modalities))}."
            )
        if num_classes < 2 or dim < 1 or proj_dim < 1 or depth < 0:
            raise ValueError(
                f"invalid sizes: num_classes={num_classes}, dim={dim}, proj_dim={proj_dim}, depth={depth}."
            )
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.proj_dim = int(proj_dim)
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})

        counts: dict[str, int] = {}
        for m in self.modalities:
            n = (num_tokens or {}).get(m, getattr(self.encoders[m], "num_tokens", None))
            if n is None or int(n) < 1:
                raise ValueError(
                    f"modality '{m}': number of tokens unknown; give num_tokens['{m}'] or an encoder with a fixed "
                    f"num_tokens (e.g. ImageTokenEncoder with pool_size or spatial_size)."
                )
            counts[m] = int(n)
        self.num_tokens: dict[str, int] = counts
        self.total_tokens = sum(counts.values())
        token_modality = torch.cat(
            [torch.full((counts[m],), i, dtype=torch.int64) for i, m in enumerate(self.modalities)]
        )
        self.register_buffer("token_modality", token_modality, persistent=False)

        self.token_norms = nn.ModuleDict({m: nn.LayerNorm(dim) for m in self.modalities})
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1 + self.total_tokens, dim))
        for p in (self.modality_embedding, self.cls_token, self.pos_embedding):
            nn.init.trunc_normal_(p, std=0.02)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model=dim,
                    nhead=num_heads,
                    dim_feedforward=max(1, int(round(dim * mlp_ratio))),
                    dropout=dropout,
                    activation="gelu",
                    batch_first=True,
                    norm_first=True,
                )
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)
        self.projection = nn.Linear(dim, proj_dim)

    # ------------------------------------------------------------------ encoding
    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every modality's encoder: ``{name: [B, ...]}`` -> ``{name: tokens [B, n_m, dim]}``."""
        self._check_names(inputs, "inputs")
        tokens: dict[str, torch.Tensor] = {}
        batch: int | None = None
        for m in self.modalities:
            x = inputs[m]
            if not isinstance(x, torch.Tensor):
                raise ValueError(f"modality '{m}': expected a tensor, found {type(x).__name__}.")
            if isinstance(x, MetaTensor):
                x = x.as_tensor()
            if x.ndim == 0:
                raise ValueError(f"modality '{m}': expected a batch tensor [B, ...], found a scalar.")
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(
                    f"modality '{m}': batch size {x.shape[0]} differs from {batch} of '{self.modalities[0]}'."
                )
            tokens[m] = self.encoders[m](x)
        self._check_tokens(tokens)
        return tokens

    # ------------------------------------------------------------------ fusion
    def fuse(self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse per-row subsets: tokens ``{name: [B, n_m, dim]}``, subset BoolTensor ``[B, M]`` (``[M]``: same for
        all rows) -> ``(logits [B, C], z [B, proj_dim])``. Only the visible tokens of each row are computed."""
        x, visible = self._embed(tokens, subset)
        counts = visible.sum(1)
        # visible positions first, in their original order (CLS is always visible, so it stays first)
        order = torch.argsort((~visible).to(torch.int8), dim=1, stable=True)
        lengths = torch.unique(counts).tolist()
        if len(lengths) == 1:
            x = torch.gather(x, 1, order[:, : lengths[0], None].expand(-1, -1, x.shape[-1]))
            return self._transform(x, None)
        # rows with equal visible counts are run together, so no sequence carries padding
        all_rows, all_logits, all_z = [], [], []
        for length in lengths:
            rows = (counts == length).nonzero().flatten()
            idx = order.index_select(0, rows)[:, :length]
            xr = torch.gather(x.index_select(0, rows), 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            lr, zr = self._transform(xr, None)
            all_rows.append(rows)
            all_logits.append(lr)
            all_z.append(zr)
        perm = torch.cat(all_rows)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        return torch.cat(all_logits)[inverse], torch.cat(all_z)[inverse]

    def fuse_full(self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference path of :meth:`fuse`: the whole sequence with a key mask hiding modalities outside the subset."""
        x, visible = self._embed(tokens, subset)
        return self._transform(x, visible)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], subset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fuse(encode(inputs), subset)``; ``subset=None`` uses all modalities -> ``(logits [B, C], z [B, D])``."""
        tokens = self.encode(inputs)
        if subset is None:
            batch = next(iter(tokens.values())).shape[0]
            subset = torch.ones(batch, len(self.modalities), dtype=torch.bool, device=self.cls_token.device)
        return self.fuse(tokens, subset)

    # ------------------------------------------------------------------ internals
    def _check_names(self, mapping: Mapping[str, torch.Tensor], what: str) -> None:
        names = set(mapping.keys())
        missing = [m for m in self.modalities if m not in names]
        unknown = sorted(str(k) for k in names - set(self.modalities))
        if missing or unknown:
            raise ValueError(
                f"{what} must hold exactly the modalities {list(self.modalities)}: "
                f"missing {missing}, unknown {unknown}."
            )

    def _check_tokens(self, tokens: Mapping[str, torch.Tensor]) -> int:
        self._check_names(tokens, "tokens")
        first = tokens[self.modalities[0]]
        batch = first.shape[0] if isinstance(first, torch.Tensor) and first.ndim > 0 else -1
        for m in self.modalities:
            t = tokens[m]
            expected = (batch, self.num_tokens[m], self.dim)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected:
                found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"modality '{m}': expected tokens of shape [B, n, dim] = {expected}, found {found}.")
        return batch

    def _embed(self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedded sequence ``[B, 1 + N, dim]`` and visibility ``BoolTensor[B, 1 + N]`` (CLS first)."""
        batch = self._check_tokens(tokens)
        num_mod = len(self.modalities)
        if not isinstance(subset, torch.Tensor) or subset.dtype != torch.bool:
            found = getattr(subset, "dtype", type(subset).__name__)
            raise ValueError(f"subset must be a bool tensor [B, {num_mod}], found {found}.")
        if subset.ndim == 1 and subset.shape[0] == num_mod:
            subset = subset.unsqueeze(0).expand(batch, -1)
        if tuple(subset.shape) != (batch, num_mod):
            raise ValueError(f"subset must have shape [B, M] = {(batch, num_mod)}, found {tuple(subset.shape)}.")
        empty = ~subset.any(1)
        if empty.any():
            raise ValueError(f"row {int(empty.nonzero()[0])}: empty subset (no modality selected).")
        subset = subset.to(self.cls_token.device)
        parts = [self.cls_token.expand(batch, -1, -1)]
        for i, m in enumerate(self.modalities):
            t = self.token_norms[m](tokens[m])
            t = t * subset[:, i, None, None].to(t.dtype)
            parts.append(t + self.modality_embedding[i])
        x = torch.cat(parts, dim=1) + self.pos_embedding
        visible = torch.cat([torch.ones_like(subset[:, :1]), subset[:, self.token_modality]], dim=1)
        return x, visible

    def _transform(self, x: torch.Tensor, visible: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        padding = None if visible is None else ~visible
        for block in self.blocks:
            x = block(x, src_key_padding_mask=padding)
        cls = self.norm(x[:, 0])
        return self.classifier(cls), F.normalize(self.projection(cls), dim=-1)


def build_image_fusion(
    modalities: Sequence[str],
    spatial_dims: int,
    num_classes: int,
    in_channels: int = 1,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    proj_dim: int = 64,
    dropout: float = 0.0,
    channels: Sequence[int] = (16, 32, 64),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 0,
    pool_size: Sequence[int] | int | None = None,
    norm: tuple | str | None = "INSTANCE",
    act: tuple | str | None = "PRELU",
) -> DynamicFusionTransformer:
    """Fusion network with one :class:`ImageTokenEncoder` per image modality (e.g. MRI volumes ``[B, 1, 64, 64, 64]``).

    ``pool_size`` defaults to a 4x4 token grid in 2D and 2x2x2 in 3D.
    """
    if pool_size is None:
        pool_size = 4 if spatial_dims == 2 else 2
    encoders = {
        m: ImageTokenEncoder(
            spatial_dims,
            in_channels,
            dim,
            channels=channels,
            strides=strides,
            num_res_units=num_res_units,
            pool_size=pool_size,
            norm=norm,
            act=act,
        )
        for m in modalities
    }
    return DynamicFusionTransformer(
        modalities,
        encoders,
        num_classes=num_classes,
        dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        proj_dim=proj_dim,
        dropout=dropout,
    )


def build_polymnist_fusion(
    num_modalities: int = 5,
    num_classes: int = 10,
    modalities: Sequence[str] | None = None,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    proj_dim: int = 64,
    dropout: float = 0.0,
    channels: Sequence[int] = (32, 64),
    strides: Sequence[int] = (2, 2),
    pool_size: Sequence[int] | int = 4,
    norm: tuple | str | None = "BATCH",
) -> DynamicFusionTransformer:
    """Small fusion network for PolyMNIST (modalities ``m0..m{M-1}``, each ``[B, 3, 28, 28]``, 16 tokens each)."""
    names = tuple(modalities) if modalities is not None else tuple(f"m{i}" for i in range(num_modalities))
    return build_image_fusion(
        names,
        spatial_dims=2,
        num_classes=num_classes,
        in_channels=3,
        dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        proj_dim=proj_dim,
        dropout=dropout,
        channels=channels,
        strides=strides,
        pool_size=pool_size,
        norm=norm,
    )
