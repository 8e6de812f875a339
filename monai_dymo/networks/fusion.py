"""The DyMo fusion network: per-modality encoders and a transformer accepting any modality subset (method section 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.data import MetaTensor

from ..similarity import check_metric
from .fusion_inputs import check_index, check_modality_names, check_subset, check_tokens
from .packed_attention import block_all_tokens, block_cls_token, check_packable_blocks

#: how the logits of a subset are formed (see :class:`DynamicFusionTransformer`, ``logit_fusion``)
LOGIT_FUSIONS = ("transformer", "product")

__all__ = ["DynamicFusionTransformer", "build_image_fusion", "build_polymnist_fusion"]


class DynamicFusionTransformer(nn.Module):
    """Transformer fusion of modality tokens with subset masking (DyMo's flexible fusion network ``F``).

    The network computes, for a subset ``S`` (method section 1): tokens get a per-modality LayerNorm, tokens of
    modalities outside ``S`` are zeroed, a learned modality embedding is added to every token, a learned CLS token is
    prepended, learned positional embeddings are added over the whole sequence
    ``[CLS, tokens of modality 0, ..., tokens of modality M-1]``, and pre-norm transformer blocks run with an attention
    mask hiding the tokens of modalities outside ``S`` (CLS always visible). The final CLS state feeds a linear
    classifier (logits ``[B, C]``) and a linear projection head (``z [B, proj_dim]``, L2-normalised for the cosine
    metric, not normalised for the Euclidean variant).

    It is split so that a sample is encoded once and then fused with many subsets:

    - ``encode`` runs each modality's encoder and the subset-independent per-token work (LayerNorm, modality and
      positional embeddings; :meth:`embed_tokens`) -> tokens ``{name: [B, n_m, dim]}``. The zeroing of unselected
      modalities is skipped: their tokens are hidden from attention, so it cannot change the CLS output.
    - ``fuse(tokens, subset, index=None)`` evaluates one subset per row. Only each row's visible tokens are computed:
      they are packed without padding (CLS first; rows of equal sequence length run their attention together, in
      chunks of about ``chunk_tokens`` tokens on CPU), the last block computes only the CLS query (the one output
      used), and with ``index`` (several rows per sample, as in the greedy selection) the first block's LayerNorm and
      query/key/value projection are done once per sample.
    - ``fuse_full`` is the straightforward full-sequence masked computation through the blocks' own ``forward``, kept
      as the reference (they agree to float tolerance).

    The transformer blocks are ``torch.nn.TransformerEncoderLayer`` (pre-norm, GELU) driven by ``src_key_padding_mask``:
    MONAI's ``TransformerBlock``/``SABlock`` take an equivalent key mask but need the optional ``einops`` package.
    ``fuse`` computes the blocks' own computation from their parameters (tested equal to
    ``nn.TransformerEncoderLayer(..., activation="gelu", batch_first=True, norm_first=True)`` with and without bias);
    a block of any other configuration (post-norm, another activation, separate key/value widths, extra key/value
    biases, ...) is refused with a ``ValueError`` naming the block, rather than computed differently.

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
        metric: ``"cosine"`` (``z`` L2-normalised) or ``"euclidean"`` (``z`` as projected: docs/method.md's
            Euclidean variant); the prototype loss, calibration and selection must use the same metric.
        logit_fusion: ``"transformer"`` (docs/method.md's network: the CLS classifier's logits for the subset) or
            ``"product"``: the sum of the log-probabilities of the subset's modalities each fused ALONE (a product of
            single-modality experts, trained as every subset's transformer logits are, by :meth:`fuse_subsets`; the
            per-modality auxiliary loss trains each expert alone). ``z`` is the transformer's in both, so prototypes,
            calibration and the quality score are unchanged; the prediction and the class ``c`` of the in-class score
            follow the product.
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
        metric: str = "cosine",
        logit_fusion: str = "transformer",
    ) -> None:
        super().__init__()
        metric = check_metric(metric)
        if logit_fusion not in LOGIT_FUSIONS:
            raise ValueError(f"logit_fusion must be one of {list(LOGIT_FUSIONS)}, got {logit_fusion!r}.")
        self.metric = metric
        self.logit_fusion = logit_fusion
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
        starts = [1]  # position of each modality's first token in the sequence (CLS is position 0)
        for m in self.modalities[:-1]:
            starts.append(starts[-1] + counts[m])
        self._token_start: tuple[int, ...] = tuple(starts)

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
        self.chunk_tokens = 4096  # CPU only: tokens per packed chunk in ``fuse`` (cache-sized); 0 = whole groups
        self.classifier = nn.Linear(dim, num_classes)
        self.projection = nn.Linear(dim, proj_dim)

    # ------------------------------------------------------------------ encoding
    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run every modality's encoder and embed its tokens: ``{name: [B, ...]}`` -> ``{name: [B, n_m, dim]}``.

        The returned tokens already carry everything that does not depend on the subset (see :meth:`embed_tokens`),
        so that it is computed once per sample rather than once per (sample, subset) row in :meth:`fuse`.
        """
        check_modality_names(self.modalities, inputs, "inputs")
        raw: dict[str, torch.Tensor] = {}
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
            raw[m] = self.encoders[m](x)
        return self.embed_tokens(raw)

    def embed_tokens(self, raw: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Subset-independent per-token embedding of raw encoder outputs ``{name: [B, n_m, dim]}``: the modality's
        LayerNorm, plus its modality embedding, plus the positional embeddings of its slots in the sequence
        ``[CLS, tokens of modality 0, ..., tokens of modality M-1]`` -> ``{name: [B, n_m, dim]}``.

        The method's zeroing of the tokens of modalities outside the subset is not needed: those tokens are hidden
        from attention, so their values never reach the CLS output.
        """
        self._check_tokens(raw)
        out: dict[str, torch.Tensor] = {}
        for i, m in enumerate(self.modalities):
            start, n = self._token_start[i], self.num_tokens[m]
            t = self.token_norms[m](raw[m]) + self.modality_embedding[i]
            out[m] = t + self.pos_embedding[:, start : start + n]
        return out

    # ------------------------------------------------------------------ fusion
    def fuse(
        self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fuse per-row subsets of embedded tokens (from :meth:`encode`) -> ``(logits [R, C], z [R, proj_dim])``.

        Args:
            tokens: ``{name: [B, n_m, dim]}``.
            subset: BoolTensor ``[R, M]`` (``[M]``: the same subset for every row).
            index: optional LongTensor ``[R]``: row ``r`` fuses the tokens of sample ``index[r]`` (default: ``R = B``,
                row ``r`` uses sample ``r``).

        ``z`` is the transformer's projection for the subset; the logits are the transformer's own
        (``logit_fusion="transformer"``) or the product of the subset's single-modality experts (``"product"``,
        :meth:`product_of_experts`). Computed by the packed path (:meth:`fuse_packed`).
        """
        logits, z = self.fuse_packed(tokens, subset, index)
        if self.logit_fusion == "product":
            logits = self.product_of_experts(tokens, subset, index, self.fuse_packed)
        return logits, z

    def product_of_experts(
        self,
        tokens: Mapping[str, torch.Tensor],
        subset: torch.Tensor,
        index: torch.Tensor | None,
        fuse_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Logits ``[R, C]`` of the product of the subset's single-modality experts.

        ``logits = sum_{m in S} log_softmax(l({m}))``, ``l({m})`` the transformer's logits of modality ``m`` alone.

        Each modality fused ALONE (``fuse_fn(tokens, {m}, index)``) is an expert ``p(y | x_m)``; with modalities
        independent given the class and balanced classes, their product is the Bayes rule on the subset (naive Bayes
        over modalities). Every (sample, modality) pair the rows need is fused once. An empty row gives zeros.
        """
        batch, rows, index, subset = self._check_rows(tokens, subset, index)
        num_mod = len(self.modalities)
        sample = torch.arange(rows, device=subset.device) if index is None else index.to(subset.device)
        need = torch.zeros(batch, num_mod, dtype=torch.int64, device=subset.device).index_add_(0, sample, subset.long())
        pairs = (need > 0).nonzero()  # [P, 2]: (sample, modality)
        eye = torch.eye(num_mod, dtype=torch.bool, device=subset.device)
        alone, _ = fuse_fn(tokens, eye.index_select(0, pairs[:, 1]), pairs[:, 0])
        table = alone.new_zeros(batch, num_mod, self.num_classes)
        table[pairs[:, 0], pairs[:, 1]] = alone.log_softmax(-1)
        return (table.index_select(0, sample) * subset.unsqueeze(-1).to(table.dtype)).sum(1)

    def fuse_packed(
        self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The transformer's own ``(logits [R, C], z [R, proj_dim])`` for per-row subsets (arguments of :meth:`fuse`).

        Several rows may share a sample (``index``): their subset-independent work (the first block's LayerNorm and
        query/key/value projection) is then done once per sample. Only each row's visible tokens are computed: they
        are packed without padding (rows of equal sequence length run their attention together) and the last block
        only computes the CLS query, the one output used.
        """
        batch, rows, index, subset = self._check_rows(tokens, subset, index)
        check_packable_blocks(self.blocks, self.dim)
        dim, num_tok = self.dim, self.total_tokens
        device = subset.device
        if rows == 0:
            return self._head(tokens[self.modalities[0]].new_zeros(0, dim))

        # ---- packing: rows sorted by visible-token count, each row = [CLS, its visible tokens in sequence order]
        visible = subset[:, self.token_modality]  # [R, N]
        counts = visible.sum(1)
        order = torch.argsort(counts, stable=True)
        lengths, sizes = torch.unique_consecutive(counts.index_select(0, order), return_counts=True)
        groups: list[tuple[int, int, int]] = []  # (first packed token, rows, sequence length incl. CLS)
        start = 0
        for length, size in zip(lengths.tolist(), sizes.tolist()):
            groups.append((start, size, length + 1))
            start += size * (length + 1)
        sample = order if index is None else index.index_select(0, order)
        in_seq = torch.cat([torch.ones_like(visible[:, :1]), visible.index_select(0, order)], dim=1)  # [R, 1 + N]
        src = torch.arange(-1, num_tok, device=device) + 1 + sample[:, None] * num_tok  # source row of each slot
        src[:, 0] = 0  # source row 0 is the CLS token
        flat = src[in_seq]  # [T], CLS first in each row

        cls = (self.cls_token[0] + self.pos_embedding[0, :1]).to(dtype=tokens[self.modalities[0]].dtype)  # [1, dim]
        source = torch.cat([cls, torch.cat([tokens[m] for m in self.modalities], dim=1).reshape(-1, dim)])
        qkv_source = None
        if len(self.blocks) > 0 and source.shape[0] < flat.shape[0]:
            # the first block's LayerNorm + q/k/v projection is per token: do it once per sample, then gather
            first = self.blocks[0]
            qkv_source = F.linear(first.norm1(source), first.self_attn.in_proj_weight, first.self_attn.in_proj_bias)
        limit = self.chunk_tokens if device.type == "cpu" else 0
        outputs = []
        for start, n, length in groups:
            step = max(1, limit // length) if limit else n
            for r0 in range(0, n, step):
                k = min(step, n - r0)
                idx = flat[start + r0 * length : start + (r0 + k) * length]
                x = source.index_select(0, idx)  # [k * length, dim]
                qkv = None if qkv_source is None else qkv_source.index_select(0, idx)
                for i, block in enumerate(self.blocks):
                    if i < len(self.blocks) - 1:
                        x = block_all_tokens(block, x, qkv, k, length)
                    else:
                        x = block_cls_token(block, x, qkv, k, length)
                    qkv = None
                outputs.append(x if len(self.blocks) else x.view(k, length, dim)[:, 0])
        logits, z = self._head(outputs[0] if len(outputs) == 1 else torch.cat(outputs))
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(rows, device=device)
        return logits.index_select(0, inverse), z.index_select(0, inverse)

    def fuse_full(
        self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference path of :meth:`fuse`: the whole sequence ``[CLS, all tokens]`` through the blocks' own
        ``forward`` with a key mask hiding modalities outside the subset (same arguments and results as ``fuse``)."""
        logits, z = self._fuse_full_transformer(tokens, subset, index)
        if self.logit_fusion == "product":
            logits = self.product_of_experts(tokens, subset, index, self._fuse_full_transformer)
        return logits, z

    def _fuse_full_transformer(
        self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _, rows, index, subset = self._check_rows(tokens, subset, index)
        if index is not None:
            tokens = {m: t.index_select(0, index) for m, t in tokens.items()}
        first = tokens[self.modalities[0]]
        cls = (self.cls_token + self.pos_embedding[:, :1]).to(first.dtype).expand(rows, -1, -1)
        x = torch.cat([cls] + [tokens[m] for m in self.modalities], dim=1)
        visible = torch.cat([torch.ones_like(subset[:, :1]), subset[:, self.token_modality]], dim=1)
        for block in self.blocks:
            x = block(x, src_key_padding_mask=~visible)
        return self._head(x[:, 0])

    def fuse_subsets(
        self, tokens: Mapping[str, torch.Tensor], subsets: torch.Tensor, present: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """Fuse every (subset, sample) row of embedded tokens (from :meth:`encode`) in one batched call.

        Row ``(k, b)`` uses subset ``subsets[k]``, restricted to ``present[b]`` when ``present`` is given; rows whose
        restricted subset is empty are skipped.

        The logits are the transformer's own for every row, whatever ``logit_fusion``: they are what training's
        cross-entropy fits and what the checkpoint criterion scores (a one-modality row trains that modality's
        expert); ``logit_fusion="product"`` only changes the decision of :meth:`fuse`. (Fitting the product itself
        measured lower on the default cohort's validation split: bundle docs, "Levers".)

        Args:
            tokens: ``{name: [B, n_m, dim]}``.
            subsets: BoolTensor ``[K, M]``.
            present: optional BoolTensor ``[B, M]`` of observed modalities.

        Returns:
            ``{"logits": [N, C], "z": [N, D], "rows": [N] sample index, "groups": [N] subset index k,
            "subset": [N, M] the subset each row was fused with}``, rows ordered subset-major. With no row left,
            ``logits`` and ``z`` are None and ``"anchor"`` is a zero scalar depending on every parameter (a backward
            through it gives zero gradients, e.g. to take part in a distributed gradient reduction).
        """
        batch = self._check_tokens(tokens)
        num_mod = len(self.modalities)
        if not isinstance(subsets, torch.Tensor) or subsets.dtype != torch.bool or subsets.ndim != 2 or (
            subsets.shape[1] != num_mod
        ):
            found = f"{subsets.dtype} {tuple(subsets.shape)}" if isinstance(subsets, torch.Tensor) else type(subsets)
            raise ValueError(f"subsets must be a bool tensor [K, {num_mod}], found {found}.")
        device = self.cls_token.device
        subsets = subsets.to(device)
        per_row = subsets.unsqueeze(1).expand(-1, batch, -1)
        if present is not None:
            if tuple(present.shape) != (batch, num_mod):
                raise ValueError(f"present must have shape [B, M] = {(batch, num_mod)}, found {tuple(present.shape)}.")
            per_row = per_row & present.to(device=device, dtype=torch.bool).unsqueeze(0)
        flat = per_row.reshape(-1, num_mod)
        keep = flat.any(1).nonzero().flatten()
        rows, groups = keep % batch, torch.div(keep, batch, rounding_mode="floor")
        if keep.numel() == 0:
            anchor = sum(p.sum() for p in self.parameters()) * 0.0
            anchor = anchor + sum(t.sum() for t in tokens.values()) * 0.0
            return {"logits": None, "z": None, "rows": rows, "groups": groups, "subset": flat[:0], "anchor": anchor}
        if keep.numel() == flat.shape[0]:
            tok = {m: t.repeat(subsets.shape[0], *([1] * (t.ndim - 1))) for m, t in tokens.items()}
        else:
            tok = {m: t.index_select(0, rows) for m, t in tokens.items()}
        logits, z = self.fuse_packed(tok, flat[keep])  # the transformer's own logits, also with logit_fusion "product"
        return {"logits": logits, "z": z, "rows": rows, "groups": groups, "subset": flat[keep]}

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        subset: torch.Tensor | None = None,
        subsets: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor | None]:
        """Two modes, both through ``forward`` so that a ``DistributedDataParallel`` wrapper sees the computation:

        - ``subsets=None`` (default): ``fuse(encode(inputs), subset)``, one subset per sample (``subset [B, M]`` or
          ``[M]``; None = all modalities) -> ``(logits [B, C], z [B, D])``.
        - ``subsets [K, M]`` (subset-augmented training): ``fuse_subsets(encode(inputs), subsets, present)`` -> the
          dict of :meth:`fuse_subsets` (every sample encoded once, fused with every subset).
        """
        tokens = self.encode(inputs)
        if subsets is not None:
            if subset is not None:
                raise ValueError("give either `subset` (one per sample) or `subsets` (K subsets for every sample).")
            return self.fuse_subsets(tokens, subsets, present)
        if present is not None:
            raise ValueError("`present` is only used with `subsets`; restrict `subset` to the observed modalities.")
        if subset is None:
            batch = next(iter(tokens.values())).shape[0]
            subset = torch.ones(batch, len(self.modalities), dtype=torch.bool, device=self.cls_token.device)
        return self.fuse(tokens, subset)

    # ------------------------------------------------------------------ internals
    def _check_tokens(self, tokens: Mapping[str, torch.Tensor]) -> int:
        """Batch size of embedded tokens ``{name: [B, n_m, dim]}``."""
        return check_tokens(self.modalities, self.num_tokens, self.dim, tokens)

    def _check_rows(
        self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, index: torch.Tensor | None
    ) -> tuple[int, int, torch.Tensor | None, torch.Tensor]:
        """Validated arguments of a fusion call (see :meth:`fuse`): ``(B, R, index [R] or None, subset [R, M])``."""
        batch = self._check_tokens(tokens)
        device = self.cls_token.device
        rows, index = check_index(index, batch, device)
        return batch, rows, index, check_subset(subset, rows, len(self.modalities), device)

    def _head(self, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final CLS states ``[R, dim]`` -> ``(logits [R, C], z [R, proj_dim])``."""
        cls = self.norm(cls)
        z = self.projection(cls)
        return self.classifier(cls), F.normalize(z, dim=-1) if self.metric == "cosine" else z


def build_image_fusion(
    modalities: Sequence[str],
    spatial_dims: int,
    num_classes: int,
    in_channels: int = 1,
    dim: int = 64,
    proj_dim: int = 64,
    dropout: float = 0.0,
    channels: Sequence[int] = (16, 32, 64),
    strides: Sequence[int] = (2, 2, 2),
    pool_size: Sequence[int] | int | None = None,
    pool_mode: str = "avg",
    norm: tuple | str | None = "INSTANCE",
    backbone: str = "small",
    pretrained: str | None = None,
    **settings: Any,
) -> DynamicFusionTransformer:
    """Preset of :func:`~monai_dymo.networks.build_fusion`: image modalities ``[B, in_channels, *spatial]`` of one
    kind (``spatial_dims`` 2 or 3) sharing the encoder settings ``backbone`` / ``channels`` / ``strides`` /
    ``pool_size`` (default a 4x4 token grid in 2D, 2x2x2 in 3D) / ``pretrained``; other ``settings`` are
    ``FusionSettings`` fields."""
    from monai_dymo.networks.fusion_builder import build_fusion

    kind = "image2d" if spatial_dims == 2 else "image3d"
    axis = kind[-2:]
    entries = [{"name": m, "kind": kind, "channels": in_channels} for m in modalities]
    return build_fusion(
        entries,
        num_classes,
        dim=dim,
        proj_dim=proj_dim,
        dropout=dropout,
        pool_mode=pool_mode,
        norm=norm,
        pretrained={kind: pretrained} if pretrained is not None else None,
        **{f"backbone_{axis}": backbone, f"channels_{axis}": channels, f"strides_{axis}": strides},
        **{f"pool_{axis}": pool_size if pool_size is not None else (4 if spatial_dims == 2 else 2)},
        **settings,
    )


def build_polymnist_fusion(
    num_modalities: int = 5,
    num_classes: int = 10,
    modalities: Sequence[str] | None = None,
    channels: Sequence[int] = (32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    pool_size: Sequence[int] | int = 2,
    **settings: Any,
) -> DynamicFusionTransformer:
    """Preset of :func:`~monai_dymo.networks.build_fusion` for PolyMNIST (modalities ``m0..m{M-1}``, each
    ``[B, 3, 28, 28]``) with the reference's network (docs/method.md §7), the PolyMNIST bundle's: dim 128, MLP
    ratio 4, per modality three stride-2 ReLU convolutions (32, 64, 128 channels) without normalisation and a 2x2
    max-pool (4 tokens per modality; ``channels`` / ``strides`` / ``pool_size``); ``settings`` (``FusionSettings``
    fields) override these."""
    from monai_dymo.networks.fusion_builder import build_fusion

    names = tuple(modalities) if modalities is not None else tuple(f"m{i}" for i in range(num_modalities))
    entries = [{"name": m, "kind": "image2d", "spatial_size": (28, 28), "channels": 3} for m in names]
    preset = dict(dim=128, mlp_ratio=4.0, proj_dim=64, dropout=0.0, channels_2d=channels, strides_2d=strides,
                  pool_2d=pool_size, norm=None, act="RELU", pool_mode="max")
    return build_fusion(entries, num_classes, preset, **settings)
