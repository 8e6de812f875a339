"""The fusion and recovery networks of a cohort, built from its spec and fitted clinical statistics.

Nothing is left to the user: image encoders follow each modality's kind and size, the clinical token encoders and the
MoPoE clinical experts get their field counts, categorical cardinalities and categorical field indices from the
fitted :class:`~monai_dymo.transforms.ClinicalFieldStats` (continuous fields first, as the transform encodes them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.keys import DyMoKeys
from monai_dymo.networks import (
    ClinicalTokenEncoder,
    DynamicFusionTransformer,
    ImageTokenEncoder,
    IterativeImputerRecovery,
    MoPoERecovery,
)
from monai_dymo.transforms.clinical import ClinicalFieldStats

__all__ = [
    "clinical_layouts",
    "build_cohort_fusion",
    "build_cohort_recovery",
    "recovery_kind",
    "load_recovery_weights",
    "fit_imputer_recovery",
]


def _stats(stats: ClinicalFieldStats | str | Path | None) -> ClinicalFieldStats | None:
    if stats is None or isinstance(stats, ClinicalFieldStats):
        return stats
    path = Path(stats)
    if not path.is_file():
        raise FileNotFoundError(f"clinical statistics not found: {path}; run the bundle's prepare stage first.")
    return ClinicalFieldStats.load(path)


def clinical_layouts(spec: CohortSpec, stats: ClinicalFieldStats | str | Path | None) -> dict[str, dict[str, Any]]:
    """Per clinical group: ``{"fields", "num_continuous", "categorical": {field: K}, "categorical_index": {i: K}}``."""
    if not spec.clinical_modalities:
        return {}
    fitted = _stats(stats)
    if fitted is None:
        raise ValueError("the cohort has clinical modalities: give the clinical statistics of the prepare stage.")
    out = {}
    for m in spec.clinical_modalities:
        info = fitted.describe(list(m.fields))
        order = info["fields"]
        info["categorical_index"] = {order.index(f): k for f, k in info["categorical"].items()}
        out[m.name] = info
    return out


def build_cohort_fusion(
    spec: CohortSpec,
    stats: ClinicalFieldStats | str | Path | None = None,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    mlp_ratio: float = 2.0,
    proj_dim: int = 32,
    dropout: float = 0.1,
    channels_3d: Sequence[int] = (16, 32, 64),
    channels_2d: Sequence[int] = (16, 32, 64),
    pool_3d: int = 2,
    pool_2d: int = 2,
    pool_mode: str = "max",
    norm: str = "INSTANCE",
) -> DynamicFusionTransformer:
    """DyMo fusion network over the cohort's modalities (in the spec's order).

    - ``image3d``: :class:`ImageTokenEncoder` (3D, 1 channel, ``channels_3d`` stride-2 stages, ``pool_3d**3`` tokens,
      max-pooled by default: a small lesion anywhere in its region should reach the token, not be averaged away);
    - ``image2d``: the same in 2D (``pool_2d**2`` tokens), with the modality's ``channels`` (3 for RGB pictures);
    - ``clinical``: :class:`ClinicalTokenEncoder` (one token per field, cardinalities from the statistics).
    """
    layouts = clinical_layouts(spec, stats)
    encoders: dict[str, nn.Module] = {}
    for m in spec.modalities:
        if m.kind == "clinical":
            info = layouts[m.name]
            encoders[m.name] = ClinicalTokenEncoder(info["num_continuous"], list(info["categorical"].values()), dim)
        else:
            channels = tuple(channels_3d if m.kind == "image3d" else channels_2d)
            encoders[m.name] = ImageTokenEncoder(
                m.spatial_dims,
                m.channels,
                dim,
                channels=channels,
                strides=(2,) * len(channels),
                pool_size=pool_3d if m.kind == "image3d" else pool_2d,
                pool_mode=pool_mode,
                norm=norm,
            )
    return DynamicFusionTransformer(
        spec.modality_names,
        encoders,
        num_classes=spec.num_classes,
        dim=dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        proj_dim=proj_dim,
        dropout=dropout,
    )


def recovery_kind(spec: CohortSpec) -> str:
    """``"mopoe"`` when the cohort has images, ``"imputer"`` for clinical-only cohorts."""
    return "mopoe" if spec.image_modalities else "imputer"


def build_cohort_recovery(
    spec: CohortSpec,
    stats: ClinicalFieldStats | str | Path | None = None,
    latent_dim: int = 64,
    beta: float = 1.0,
    channels_3d: Sequence[int] = (8, 16, 32, 64),
    channels_2d: Sequence[int] = (32, 64, 128),
    clinical_hidden: Sequence[int] = (64, 64),
    expert_parametrization: str = "natural",
    image_options: Mapping[str, Any] | None = None,
) -> MoPoERecovery | IterativeImputerRecovery:
    """Recovery network of the cohort: MoPoE over every modality when there are images, else the iterative imputer.

    Images: Gaussian likelihood for z-scored intensities (no output activation), Laplace with a sigmoid output for
    [0, 1] intensities; clinical groups: Gaussian for continuous fields, categorical for categorical ones.
    """
    layouts = clinical_layouts(spec, stats)
    if recovery_kind(spec) == "imputer":
        return IterativeImputerRecovery(
            {g: info["fields"] for g, info in layouts.items()},
            categorical={g: info["categorical_index"] for g, info in layouts.items() if info["categorical_index"]},
        )
    specs: dict[str, dict[str, Any]] = {}
    for m in spec.modalities:
        if m.kind == "clinical":
            info = layouts[m.name]
            specs[m.name] = {
                "shape": [len(info["fields"])],
                "categorical": dict(info["categorical_index"]),
                "hidden": list(clinical_hidden),
            }
            continue
        channels = list(channels_3d if m.kind == "image3d" else channels_2d)
        strides = [2] * len(channels)
        while len(strides) > 1 and any(s % (2 ** len(strides)) for s in m.spatial_size):
            channels, strides = channels[:-1], strides[:-1]
        unit = m.intensity == "minmax"
        specs[m.name] = {
            "shape": [m.channels, *m.spatial_size],
            "likelihood": "laplace" if unit else "gaussian",
            "scale": 0.1 if unit else 1.0,
            "channels": channels,
            "strides": strides,
            "output_activation": "sigmoid" if unit else None,
            **dict(image_options or {}),
        }
    return MoPoERecovery(
        spec.modality_names,
        specs,
        latent_dim=latent_dim,
        beta=beta,
        expert_parametrization=expert_parametrization,
    )


def load_recovery_weights(
    network: MoPoERecovery | IterativeImputerRecovery, path: str | Path, device: Any = None
) -> MoPoERecovery | IterativeImputerRecovery:
    """The recovery network with its trained state: a MoPoE state_dict loaded in place, or the fitted imputer file
    read (returned as a new object)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recovery weights not found: {path}; train the recovery network first.")
    if isinstance(network, IterativeImputerRecovery):
        return IterativeImputerRecovery.load(path)
    from monai_dymo.checkpoints import load_weights

    load_weights(network, path, map_location=device)
    return network


def fit_imputer_recovery(network: IterativeImputerRecovery, dataset: Any, path: str | Path) -> IterativeImputerRecovery:
    """Fit a clinical-only recovery (the iterative imputer) on the encoded clinical vectors of ``dataset`` and save it."""
    import torch

    from monai_dymo.presence import align_present

    table: dict[str, list] = {m: [] for m in network.modalities}
    present = []
    for item in dataset:
        for m in network.modalities:
            table[m].append(torch.as_tensor(item[m]).float())
        present.append(align_present(item[DyMoKeys.PRESENT], network.modalities, "fit_imputer_recovery"))
    network.fit({m: torch.stack(v).numpy() for m, v in table.items()}, torch.stack(present).numpy())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    network.save(path)
    return network
