"""Pre-norm transformer blocks computed on packed sequences, from a ``torch.nn.TransformerEncoderLayer``'s parameters.

:meth:`~monai_dymo.networks.fusion.DynamicFusionTransformer.fuse` packs each row's visible tokens without padding
(``x [rows * length, dim]``, rows of one sequence length together) and runs its blocks through these functions, which
compute what ``block.forward`` computes (``activation="gelu", batch_first=True, norm_first=True``) on such packs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["check_packable_blocks", "block_all_tokens", "block_cls_token"]


def check_packable_blocks(blocks: Iterable[nn.Module], dim: int) -> None:
    """Refuse blocks that the packed computation would not compute exactly as their ``forward`` does.

    Raises:
        ValueError: naming the block and what differs from ``nn.TransformerEncoderLayer(d_model=dim, ...,
            activation="gelu", batch_first=True, norm_first=True)``.
    """
    for i, block in enumerate(blocks):
        problems = []
        if not isinstance(block, nn.TransformerEncoderLayer):
            problems.append(f"is a {type(block).__name__}, not a torch.nn.TransformerEncoderLayer")
        else:
            attn, act = block.self_attn, block.activation
            if not block.norm_first:
                problems.append("norm_first=False (post-norm)")
            if not (act is F.gelu or (type(act) is nn.GELU and act.approximate == "none")):
                problems.append(f"activation {act!r} (exact GELU expected)")
            if not attn.batch_first:
                problems.append("batch_first=False")
            if attn.in_proj_weight is None or attn.embed_dim != dim:
                problems.append(f"attention other than one packed q/k/v projection of width {dim}")
            if attn.bias_k is not None or attn.add_zero_attn:
                problems.append("add_bias_kv or add_zero_attn")
            if not (type(block.norm1) is type(block.norm2) is nn.LayerNorm):
                problems.append("norms other than torch.nn.LayerNorm")
        if problems:
            raise ValueError(
                f"fusion block {i}: {'; '.join(problems)}. DynamicFusionTransformer.fuse computes "
                'nn.TransformerEncoderLayer(activation="gelu", batch_first=True, norm_first=True) blocks only.'
            )


def _attend(block: nn.TransformerEncoderLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of ``q [n, Lq, H, hd]`` over ``k, v [n, L, H, hd]`` -> ``[n, Lq, H * hd]``."""
    p = block.self_attn.dropout if block.training else 0.0
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=p)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


def _mlp_residual(block: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """Second half of a pre-norm block: ``x + MLP(norm2(x))``."""
    h = block.linear2(block.dropout(block.activation(block.linear1(block.norm2(x)))))
    return x + block.dropout2(h)


def block_all_tokens(
    block: nn.TransformerEncoderLayer, x: torch.Tensor, qkv: torch.Tensor | None, rows: int, length: int
) -> torch.Tensor:
    """One pre-norm block (the computation of ``block.forward``) on ``rows`` packed sequences of ``length`` tokens,
    ``x [rows * length, dim]`` -> ``[rows * length, dim]``; ``qkv [rows * length, 3 dim]`` if already projected."""
    heads = block.self_attn.num_heads
    if qkv is None:
        qkv = F.linear(block.norm1(x), block.self_attn.in_proj_weight, block.self_attn.in_proj_bias)
    g = qkv.view(rows, length, 3, heads, -1)
    attn = _attend(block, g[:, :, 0], g[:, :, 1], g[:, :, 2]).reshape(rows * length, -1)
    x = x + block.dropout1(block.self_attn.out_proj(attn))
    return _mlp_residual(block, x)


def block_cls_token(
    block: nn.TransformerEncoderLayer, x: torch.Tensor, qkv: torch.Tensor | None, rows: int, length: int
) -> torch.Tensor:
    """A last block computing the CLS outputs only (the other tokens' outputs of the last block are never used):
    attention of each sequence's CLS (its first token) over all its tokens, then the MLP; ``x [rows * length, dim]``
    -> ``[rows, dim]``.

    Without precomputed ``qkv`` the keys and values are never formed: for head ``h``,
    ``q_h . (W_k,h n_j + b_k,h) = (W_k,h^T q_h) . n_j + const`` (``n_j`` the normed token; the constant cancels in
    the softmax) and ``sum_j a_j (W_v,h n_j + b_v,h) = W_v,h (sum_j a_j n_j) + b_v,h sum_j a_j``, which costs
    ``O(dim)`` per token and head instead of a ``dim x 2 dim`` projection per token.
    """
    attn_mod = block.self_attn
    heads, dim = attn_mod.num_heads, x.shape[-1]
    head_dim = dim // heads
    weight, bias = attn_mod.in_proj_weight, attn_mod.in_proj_bias
    x_cls = x.view(rows, length, dim)[:, 0]
    if qkv is not None:
        kv, q = qkv[:, dim:], qkv.view(rows, length, 3 * dim)[:, 0, :dim]
        g = kv.view(rows, length, 2, heads, -1)
        attn = _attend(block, q.view(rows, 1, heads, -1), g[:, :, 0], g[:, :, 1]).reshape(rows, dim)
    else:
        normed = block.norm1(x).view(rows, length, dim)
        q = F.linear(normed[:, 0], weight[:dim], None if bias is None else bias[:dim])  # [rows, dim]
        w_k = weight[dim : 2 * dim].view(heads, head_dim, dim)
        w_v = weight[2 * dim :].view(heads, head_dim, dim)
        q_k = torch.bmm(q.view(rows, heads, head_dim).transpose(0, 1), w_k).transpose(0, 1)  # [rows, H, dim]
        scores = torch.bmm(q_k * head_dim**-0.5, normed.transpose(1, 2))  # [rows, H, length]
        weights = torch.softmax(scores, dim=-1)
        p = attn_mod.dropout if block.training else 0.0
        if p > 0:
            weights = F.dropout(weights, p)
        context = torch.bmm(weights, normed)  # [rows, H, dim]
        attn = torch.bmm(context.transpose(0, 1), w_v.transpose(1, 2)).transpose(0, 1)  # [rows, H, head_dim]
        if bias is not None:
            b_v = bias[2 * dim :].view(heads, head_dim)
            attn = attn + (b_v * weights.sum(-1, keepdim=True) if p > 0 else b_v)
        attn = attn.reshape(rows, dim)
    x_cls = x_cls + block.dropout1(attn_mod.out_proj(attn))
    return _mlp_residual(block, x_cls)
