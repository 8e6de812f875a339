"""The fusion and recovery networks of a cohort, built from its spec and fitted clinical statistics.

Nothing is left to the user: image encoders follow each modality's kind and size (the encoder choices come from the
cohort's plan, :mod:`~monai_dymo.cohort.plan`), the clinical token encoders and the MoPoE clinical experts get their
field counts, categorical cardinalities and categorical field indices from the fitted
:class:`~monai_dymo.transforms.ClinicalFieldStats` (continuous fields first, as the transform encodes them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys
from monai_dymo.networks import (
    DynamicFusionTransformer,
    FusionSettings,
    ModalityEntry,
    build_fusion,
    build_recovery,
    encoder_backbone,
    is_small_encoder,
    IterativeImputerRecovery,
    MoPoERecovery,
)
from monai_dymo.transforms.clinical import ClinicalFieldStats

__all__ = [
    "clinical_layouts",
    "find_stats_file",
    "STATS_FILENAME",
    "FusionSettings",
    "modality_spec",
    "build_cohort_fusion",
    "init_encoders_from_recovery",
    "build_cohort_recovery",
    "recovery_kind",
    "load_recovery_weights",
    "fit_imputer_recovery",
]


#: file name of the clinical encoding statistics (written by the bundle's prepare stage into its model folder).
STATS_FILENAME = "clinical_stats.json"


def missing_stats_message(path: str | Path) -> str:
    """What to do when the clinical statistics are not at ``path`` (one line)."""
    path = Path(path)
    return (
        f"clinical statistics not found: {path}; write them with the prepare stage (same --model_dir "
        f"{path.parent}), or copy the {path.name} of the model whose weights you use into {path.parent}, or pass "
        "--stats_file PATH."
    )


def find_stats_file(model_dir: str | Path, *fallback_dirs: str | Path) -> str:
    """The clinical statistics of ``model_dir``: ``<model_dir>/clinical_stats.json`` when it is there, else the first
    of ``fallback_dirs`` holding one (e.g. the cohort's default model folder, where the prepare stage wrote it when a
    model is trained into another ``--model_dir``; said in the log), else ``<model_dir>/clinical_stats.json`` (where
    the prepare stage writes it)."""
    own = Path(model_dir) / STATS_FILENAME
    if own.is_file():
        return str(own)
    for folder in fallback_dirs:
        candidate = Path(folder) / STATS_FILENAME
        if candidate.is_file():
            logging.getLogger("monai_dymo.cohort").info("clinical statistics: %s (none in %s)", candidate, model_dir)
            return str(candidate)
    return str(own)


def _stats(stats: ClinicalFieldStats | str | Path | None) -> ClinicalFieldStats | None:
    if stats is None or isinstance(stats, ClinicalFieldStats):
        return stats
    path = Path(stats)
    if not path.is_file():
        raise DyMoFileNotFoundError(missing_stats_message(path))
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


def modality_spec(spec: CohortSpec, stats: ClinicalFieldStats | str | Path | None = None) -> list[ModalityEntry]:
    """The cohort's modalities (in the spec's order) as the networks' neutral modality spec; clinical groups take
    their field layout from the fitted statistics (continuous fields first)."""
    layouts = clinical_layouts(spec, stats)
    out = []
    for m in spec.modalities:
        if m.kind == "clinical":
            info = layouts[m.name]
            out.append(ModalityEntry(m.name, "clinical", num_continuous=info["num_continuous"],
                                     categorical=tuple(info["categorical"].values()), fields=tuple(info["fields"])))
            continue
        weights = getattr(m, "pretrained", None)
        out.append(ModalityEntry(m.name, m.kind, tuple(m.spatial_size), getattr(m, "channels", 1) or 1,
                                 unit_range=m.intensity == "minmax", pretrained=str(weights) if weights else None))
    return out


def build_cohort_fusion(
    spec: CohortSpec,
    stats: ClinicalFieldStats | str | Path | None = None,
    settings: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DynamicFusionTransformer:
    """DyMo fusion network over the cohort's modalities (in the spec's order): :func:`modality_spec` then
    :func:`~monai_dymo.networks.build_fusion`.

    The settings are :class:`~monai_dymo.networks.FusionSettings`' fields: its defaults, then ``settings`` (e.g. the cohort plan's
    ``Plan.network``), then keyword ``overrides`` (e.g. ``dim=16``; in a bundle, ``--network_def#dim 16``), the last
    winning. Unknown names stop with a ``ValueError`` naming them.

    - ``image3d`` / ``image2d``: a token encoder from :func:`~monai_dymo.networks.build_token_encoder`:
      ``backbone_3d`` / ``backbone_2d`` by name (``"small"``: ``channels_3d`` / ``channels_2d`` stride-2 stages; or a
      MONAI backbone such as ``"resnet10"``, ``"resnet18"``, ``"densenet121"``, ``"efficientnet-b0"``), tokens from
      the last feature map pooled to ``pool_3d**3`` / ``pool_2d**2`` tokens (max-pooled by default: a small lesion
      anywhere in its region should reach the token, not be averaged away), with the modality's ``channels`` (3 for
      RGB pictures);
    - ``clinical``: :class:`ClinicalTokenEncoder` (one token per field, cardinalities from the statistics).

    ``strides_3d``: the stride of each ``channels_3d`` stage of the small 3D encoder (default: 2 each), e.g.
    ``[2, 2, 1]`` keeps a finer last feature map. ``pool_mode="shells"`` (every image modality): the tokens are the
    averages over ``pool_3d`` / ``pool_2d`` concentric shells about the centre of the last feature map, for regions
    of interest centred on the lesion (cohort ``roi``; :class:`~monai_dymo.networks.RadialShellPool`).

    ``pretrained``: weights files keyed by modality name or by kind (``image3d`` / ``image2d``); a modality's own
    ``pretrained`` entry in the cohort file wins. ``input_channels``: image channels per modality name (default 1).

    ``share_encoders``: image modalities of the same kind, size, channels and starting weights share ONE encoder
    (e.g. the four co-registered MRI sequences): its filters learn from every sequence of every patient, four times
    the images of a per-sequence encoder, while the fusion still tells the sequences apart by their modality
    embedding and token normalisation. The weights file then holds the shared encoder under every modality's name.

    ``mirror_3d``: every ``image3d`` encoder reads the volume and its left-right asymmetry (the volume minus its
    mirror image about the brain's centre along axis 0, left-right after the cohort's RAS reorientation;
    :class:`~monai_dymo.networks.MirrorInputEncoder`): a lesion on one side stands out of the symmetric anatomy.
    For brain (head) volumes only.

    ``histogram_bins_3d`` (e.g. 10, with 8 shells): every ``image3d`` encoder adds one token, the log histogram of its
    region's z-scored intensities in that many bins over [-3, 6] (:class:`~monai_dymo.networks.HistogramTokenEncoder`):
    how much of the region lies in each intensity band, e.g. bright oedema against less bright tumour in FLAIR;
    ``histogram_shells_3d`` > 1: one histogram per concentric shell about the region's centre (how far out each band
    reaches around a lesion-centred region).

    ``logit_fusion``: ``"transformer"`` (docs/method.md's classifier on the fused CLS state) or ``"product"`` (the
    product of the subset's single-modality experts; :class:`~monai_dymo.networks.DynamicFusionTransformer`).
    """
    return build_fusion(modality_spec(spec, stats), spec.num_classes, settings, **overrides)


def init_encoders_from_recovery(
    network: DynamicFusionTransformer, recovery_weights: str | Path, modalities: Sequence[str] | None = None
) -> dict[str, int]:
    """Start each image encoder of the fusion network from what the recovery network learnt without labels.

    The MoPoE recovery network is trained on every observed image of the training split (no labels); its image
    experts' convolution stages (``encoders.<m>.net.layer_<i>``) are copied into the fusion network's ``"small"``
    encoders (``encoders.<m>.features.<i>``) wherever the shapes agree, so build the fusion encoders with the
    recovery's channels (``channels_3d`` = the recovery's ``channels_3d``). Returns ``{modality: tensors copied}``.

    Raises:
        FileNotFoundError: no recovery weights (train the recovery network first).
        ValueError: nothing could be copied for a modality (the architectures differ), naming it and the file.
    """
    import re

    import torch

    path = Path(recovery_weights)
    if not path.is_file():
        raise DyMoFileNotFoundError(f"recovery weights not found: {path}; train the recovery network first.")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("model", state) if isinstance(state, Mapping) else state
    names = list(modalities) if modalities is not None else [
        m for m in network.modalities if is_small_encoder(network.encoders[m])
    ]
    if not names:
        raise DyMoInputError(
            f"init_from_recovery: the fusion network has no convolutional ('small') image encoder to start from {path} "
            "(with backbone 'none' a sequence's only token is its histogram); build the encoders with "
            "--network_def#backbone_3d small."
        )
    features = {m: encoder_backbone(network.encoders[m]) for m in names}
    pattern = re.compile(r"^encoders\.(?P<m>[^.]+)\.net\.layer_(?P<i>\d+)\.(?P<rest>.+)$")
    copied: dict[str, int] = {m: 0 for m in names}
    targets = {m: features[m].state_dict() for m in names}
    for key, value in state.items():
        hit = pattern.match(key)
        if not hit or hit["m"] not in copied:
            continue
        own, target = targets[hit["m"]], f"{hit['i']}.{hit['rest']}"
        if target in own and tuple(own[target].shape) == tuple(value.shape):
            own[target] = value.to(own[target].dtype)
            copied[hit["m"]] += 1
    empty = [m for m, n in copied.items() if n == 0]
    if empty:
        raise DyMoInputError(
            f"no convolution of the recovery network {path} fits the fusion encoder(s) {empty}; build them with the "
            "recovery's channels (e.g. --network_def#channels_3d \"[8, 16, 32, 64]\")."
        )
    for m in names:
        features[m].load_state_dict(targets[m])
    return copied


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
    max_grid: int = 4,
) -> MoPoERecovery | IterativeImputerRecovery:
    """Recovery network of the cohort: :func:`modality_spec` then :func:`~monai_dymo.networks.build_recovery`
    (MoPoE over every modality when there are images, else the iterative imputer).

    Image experts: stride-2 stages of ``channels_3d`` / ``channels_2d`` (fewer when the size is not divisible; more,
    at the last width, until the final feature map is at most ``max_grid`` per side). Images: Gaussian likelihood for
    z-scored intensities (no output activation), Laplace with a sigmoid output for
    [0, 1] intensities; clinical groups: Gaussian for continuous fields, categorical for categorical ones.
    """
    return build_recovery(
        modality_spec(spec, stats),
        latent_dim=latent_dim,
        beta=beta,
        expert_parametrization=expert_parametrization,
        channels_3d=channels_3d,
        channels_2d=channels_2d,
        clinical_hidden=clinical_hidden,
        image_options=image_options,
        max_grid=max_grid,
    )


def load_recovery_weights(
    network: MoPoERecovery | IterativeImputerRecovery, path: str | Path, device: Any = None
) -> MoPoERecovery | IterativeImputerRecovery:
    """The recovery network with its trained state: a MoPoE state_dict loaded in place, or the fitted imputer file
    read (returned as a new object)."""
    path = Path(path)
    if not path.is_file():
        raise DyMoFileNotFoundError(f"recovery weights not found: {path}; train the recovery network first.")
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
