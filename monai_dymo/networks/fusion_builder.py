"""One builder of the DyMo fusion network from a modality spec and settings (:func:`build_fusion`); the modality
spec is :mod:`~monai_dymo.networks.modality_entry`'s."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from torch import nn

from monai_dymo.errors import DyMoInputError
from monai_dymo.networks.backbones import build_token_encoder
from monai_dymo.networks.encoders import ClinicalTokenEncoder
from monai_dymo.networks.fusion import DynamicFusionTransformer
from monai_dymo.networks.modality_entry import ModalityEntry, modality_entries

__all__ = ["FusionSettings", "build_fusion"]

@dataclass(frozen=True)
class FusionSettings:
    """Every setting of the fusion network besides the modalities and classes (see :func:`build_fusion`)."""

    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    proj_dim: int = 32
    dropout: float = 0.1
    channels_3d: Sequence[int] = (16, 32, 64)
    channels_2d: Sequence[int] = (16, 32, 64)
    strides_3d: Sequence[int] | None = None
    strides_2d: Sequence[int] | None = None
    pool_3d: Sequence[int] | int = 2
    pool_2d: Sequence[int] | int = 2
    pool_mode: str = "max"
    norm: tuple | str | None = "INSTANCE"
    act: tuple | str | None = "PRELU"
    num_res_units: int = 0
    backbone_3d: str = "small"
    backbone_2d: str = "small"
    pretrained: Mapping[str, str | Path] | None = None
    input_channels: Mapping[str, int] | None = None
    share_encoders: bool = False
    mirror_3d: bool = False
    histogram_bins_3d: int | None = None
    histogram_shells_3d: int = 1
    logit_fusion: str = "transformer"
    metric: str = "cosine"

    @classmethod
    def merge(cls, *layers: Mapping[str, Any] | None) -> FusionSettings:
        """The defaults overridden by each mapping in turn (the last wins); ``ValueError`` naming unknown keys."""
        known = [f.name for f in fields(cls)]
        values: dict[str, Any] = {}
        for layer in layers:
            unknown = sorted(set(layer or {}) - set(known))
            if unknown:
                raise DyMoInputError(f"fusion network: unknown setting(s) {unknown}; known settings are {known}.")
            values.update(layer or {})
        return cls(**values)


def build_fusion(
    modalities: Sequence[ModalityEntry | Mapping[str, Any]],
    num_classes: int,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DynamicFusionTransformer:
    """:class:`~monai_dymo.networks.DynamicFusionTransformer` over ``modalities`` (in their order) -> logits
    ``[B, num_classes]``.

    The settings are :class:`FusionSettings`' fields: its defaults, then ``settings`` (e.g. a cohort plan's
    ``Plan.network``), then keyword ``overrides`` (in a bundle, ``--network_def#dim 16``), the last winning.

    - ``image3d`` / ``image2d``: :func:`~monai_dymo.networks.build_token_encoder` with ``backbone_3d`` /
      ``backbone_2d``, ``channels_*``, ``strides_*`` (default 2 each), ``pool_*`` tokens per axis, ``pool_mode``
      (``"avg"``, ``"max"`` or ``"shells"``), ``norm``, ``act``, ``num_res_units``; ``mirror_3d`` and
      ``histogram_bins_3d`` / ``histogram_shells_3d`` add the left-right asymmetry input and the histogram token to
      3D encoders. ``pretrained``: weights files by modality name or kind (an entry's own ``pretrained`` wins);
      ``input_channels``: channels by modality name (over the entry's).
    - ``clinical``: :class:`~monai_dymo.networks.ClinicalTokenEncoder`, one token per field.

    ``share_encoders``: image modalities of the same kind, size, channels and weights share one encoder.
    ``logit_fusion``: ``"transformer"`` or ``"product"``; ``metric``: ``"cosine"`` or ``"euclidean"``.
    """
    cfg = FusionSettings.merge(dict(settings or {}), overrides)
    entries = modality_entries(modalities)
    given = dict(cfg.pretrained or {})
    encoders: dict[str, nn.Module] = {}
    shared: dict[tuple, nn.Module] = {}
    for m in entries:
        if m.kind == "clinical":
            encoders[m.name] = ClinicalTokenEncoder(m.num_continuous, list(m.categorical), cfg.dim)
            continue
        is_3d = m.kind == "image3d"
        weights = m.pretrained or given.get(m.name) or given.get(m.kind)
        in_channels = int((cfg.input_channels or {}).get(m.name, m.channels))
        key = (m.kind, in_channels, m.spatial_size, str(weights))
        if cfg.share_encoders and key in shared:
            encoders[m.name] = shared[key]
            continue
        strides = cfg.strides_3d if is_3d else cfg.strides_2d
        encoders[m.name] = shared[key] = build_token_encoder(
            m.spatial_dims,
            in_channels,
            cfg.dim,
            backbone=cfg.backbone_3d if is_3d else cfg.backbone_2d,
            pool_size=cfg.pool_3d if is_3d else cfg.pool_2d,
            pool_mode=cfg.pool_mode,
            pretrained=weights,
            channels=tuple(cfg.channels_3d if is_3d else cfg.channels_2d),
            strides=tuple(strides) if strides is not None else None,
            num_res_units=cfg.num_res_units,
            norm=cfg.norm,
            act=cfg.act,
            name=m.name,
            mirror_axis=0 if (is_3d and cfg.mirror_3d) else None,
            histogram_bins=cfg.histogram_bins_3d if is_3d else None,
            histogram_shells=cfg.histogram_shells_3d,
        )
    return DynamicFusionTransformer(
        [m.name for m in entries],
        encoders,
        num_classes=num_classes,
        dim=cfg.dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        proj_dim=cfg.proj_dim,
        dropout=cfg.dropout,
        metric=cfg.metric,
        logit_fusion=cfg.logit_fusion,
    )
