"""One builder of the recovery network from a modality spec (:func:`build_recovery`): MoPoE when there are images,
the iterative imputer for clinical-only specs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai_dymo.networks.modality_entry import ModalityEntry, modality_entries
from monai_dymo.networks.recovery.imputer import IterativeImputerRecovery
from monai_dymo.networks.recovery.mopoe import MoPoERecovery

__all__ = ["build_recovery", "image_stages"]


def image_stages(
    spatial_size: Sequence[int], channels: Sequence[int], max_grid: int = 4
) -> tuple[list[int], list[int]]:
    """Stride-2 stages ``(channels, strides)`` for an image of ``spatial_size``: fewer than ``channels`` while the
    size is not divisible, more (at the last width) until the final feature map is at most ``max_grid`` per side
    (the flattened map feeds the expert's linear layers, which would otherwise dominate the weights)."""
    channels, strides = list(channels), [2] * len(channels)
    while len(strides) > 1 and any(s % (2 ** len(strides)) for s in spatial_size):
        channels, strides = channels[:-1], strides[:-1]
    while min(spatial_size) // (2 ** len(strides)) > max_grid and all(
        s % (2 ** (len(strides) + 1)) == 0 for s in spatial_size
    ):
        channels, strides = [*channels, channels[-1]], [*strides, 2]
    return channels, strides


def build_recovery(
    modalities: Sequence[ModalityEntry | Mapping[str, Any]],
    latent_dim: int = 64,
    beta: float = 1.0,
    expert_parametrization: str = "natural",
    channels_3d: Sequence[int] = (8, 16, 32, 64),
    channels_2d: Sequence[int] = (32, 64, 128),
    strides_3d: Sequence[int] | None = None,
    strides_2d: Sequence[int] | None = None,
    clinical_hidden: Sequence[int] = (64, 64),
    image_options: Mapping[str, Any] | None = None,
    max_grid: int = 4,
) -> MoPoERecovery | IterativeImputerRecovery:
    """Recovery network over ``modalities`` (in their order), called as ``recovery(inputs, present [B, M])``.

    With an image modality: :class:`MoPoERecovery` with a shared latent of ``latent_dim``. Image experts: the
    ``channels_3d`` / ``channels_2d`` stages with ``strides_3d`` / ``strides_2d`` (None: stride 2 each, as many as
    :func:`image_stages` fits to the size); likelihood Laplace (scale 0.1) with a sigmoid output for ``unit_range``
    images, else Gaussian (scale 1) for z-scored ones; ``image_options``: further
    :class:`~monai_dymo.networks.recovery.ModalitySpec` fields of every image expert (e.g. ``scale``, ``act``).
    Clinical experts: ``clinical_hidden`` layers, Gaussian for continuous fields, categorical for categorical ones.

    Clinical groups only: :class:`IterativeImputerRecovery` over the groups' ``fields``.
    """
    entries = modality_entries(modalities)
    if all(m.kind == "clinical" for m in entries):
        return IterativeImputerRecovery(
            {m.name: list(m.fields) or m.num_continuous + len(m.categorical) for m in entries},
            categorical={m.name: m.categorical_index for m in entries if m.categorical},
        )
    specs: dict[str, dict[str, Any]] = {}
    for m in entries:
        if m.kind == "clinical":
            specs[m.name] = {
                "shape": [m.num_continuous + len(m.categorical)],
                "categorical": m.categorical_index,
                "hidden": list(clinical_hidden),
            }
            continue
        is_3d = m.kind == "image3d"
        channels, strides = list(channels_3d if is_3d else channels_2d), strides_3d if is_3d else strides_2d
        if strides is None:
            channels, strides = image_stages(m.spatial_size, channels, max_grid)
        specs[m.name] = {
            "shape": [m.channels, *m.spatial_size],
            "likelihood": "laplace" if m.unit_range else "gaussian",
            "scale": 0.1 if m.unit_range else 1.0,
            "channels": channels,
            "strides": list(strides),
            "output_activation": "sigmoid" if m.unit_range else None,
            **dict(image_options or {}),
        }
    return MoPoERecovery(
        [m.name for m in entries], specs, latent_dim=latent_dim, beta=beta,
        expert_parametrization=expert_parametrization,
    )
