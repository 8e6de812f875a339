"""The cohort's optional self-supervised stage: image encoders pretrained on images without labels.

:func:`pretrain_image_encoders` (the bundle's ``pretrain`` stage) reads every observed image of each image modality
of the training split, plus the datalist's optional ``unlabelled`` list (images the hospital has whose diagnosis is
not recorded; :data:`~monai_dymo.cohort.datalist.UNLABELLED_SPLIT`), all through the cohort's own preprocessing, and
trains each modality's convolution stages with :func:`~monai_dymo.engines.contrastive.pretrain_contrastive` (two
random views of each image drawn by :func:`contrastive_views`). No label is read, and the validation and test
patients are never read. Each modality's backbone is written to ``<model_dir>/self_supervised_<modality>.pt``; the
``train`` stage starts from them when the plan's ``self_supervised`` is true (:func:`load_self_supervised`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import (
    Compose,
    RandAffine,
    RandCoarseDropout,
    RandFlip,
    RandGaussianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    RandZoom,
)
from tqdm.auto import tqdm

from monai_dymo._console import bar_disabled
from monai_dymo.cohort.datalist import UNLABELLED_SPLIT, read_datalist
from monai_dymo.cohort.dataset import cohort_dataset
from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.engines.contrastive import pretrain_contrastive
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys
from monai_dymo.networks import encoder_backbone, has_convolutional_backbone, load_pretrained_backbone

__all__ = ["contrastive_views", "self_supervised_file", "pretrain_image_encoders", "load_self_supervised"]

logger = logging.getLogger("monai_dymo.cohort")


def self_supervised_file(model_dir: str | Path, modality: str) -> Path:
    """``<model_dir>/self_supervised_<modality>.pt``: the backbone state dict written by the pretrain stage."""
    return Path(model_dir) / f"self_supervised_{modality}.pt"


def contrastive_views(spatial_dims: int, spatial_size: Sequence[int], flip: bool = False, rotate_deg: float = 15.0) -> Compose:
    """Random view of one preprocessed image ``[C, *S]`` for contrastive pretraining (MONAI array transforms).

    A rotation up to ``rotate_deg`` (about every axis in 3D), scaling by up to 20 % and a shift by up to an eighth of
    the size; a zoom into the image by up to 1.4 (a random crop at the same size); intensity scaled and shifted by
    up to 20 %; Gaussian noise; up to four cut-out boxes of an eighth of the size. ``flip``: a flip along the last
    axis with probability 0.5 (only where a mirrored image means the same, e.g. skin photos).
    """
    angle = math.radians(rotate_deg)
    shift = [max(1, int(s) // 8) for s in spatial_size]
    box = [max(1, int(s) // 8) for s in spatial_size]
    chain: list[Any] = [
        RandAffine(prob=1.0, rotate_range=[angle] * (1 if spatial_dims == 2 else 3), scale_range=[0.2] * spatial_dims,
                   translate_range=shift, padding_mode="zeros", mode="bilinear"),
        RandZoom(prob=0.5, min_zoom=1.0, max_zoom=1.4, keep_size=True),
        RandScaleIntensity(factors=0.2, prob=0.8),
        RandShiftIntensity(offsets=0.2, prob=0.8),
        RandGaussianNoise(prob=0.5, std=0.05),
        RandCoarseDropout(holes=1, max_holes=4, spatial_size=box, prob=0.5),
    ]
    if flip:
        chain.insert(0, RandFlip(prob=0.5, spatial_axis=spatial_dims - 1))
    return Compose(chain)


def _observed_images(datasets: Sequence[Any], positions: dict[str, int]) -> dict[str, torch.Tensor | None]:
    """``{modality: [N_m, C, *S] observed images or None}`` for the modalities at ``positions`` (their index in the
    presence mask), reading every sample of ``datasets`` once."""
    images: dict[str, list[torch.Tensor]] = {name: [] for name in positions}
    for data in datasets:
        for i in range(len(data)):
            sample = data[i]
            for name, index in positions.items():
                if bool(sample[DyMoKeys.PRESENT][index]):
                    images[name].append(torch.as_tensor(sample[name]).float())
    return {name: torch.stack(found) if found else None for name, found in images.items()}


def pretrain_image_encoders(
    spec: CohortSpec,
    network: torch.nn.Module,
    stats_file: str | Path | None,
    model_dir: str | Path,
    datalist: str | Path | None = None,
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    temperature: float = 0.5,
    flip_2d: bool = False,
    cache: str | None = "disk",
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Pretrain every convolutional image encoder of the cohort's fusion network without labels.

    ``network``: the fusion network as ``train`` builds it (the plan's encoders); its image encoders are trained in
    place, so the written backbones load into the network that ``train`` builds. Reads the training split and the
    ``unlabelled`` list of ``datalist`` (default: the cohort's datalist; the list is optional). Writes
    ``self_supervised_<modality>.pt`` per modality and ``self_supervised.json`` (images read, losses per epoch) into
    ``model_dir``; returns that record.

    Raises:
        ValueError: the cohort has no convolutional image encoder (e.g. ``backbone none``), naming the setting.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    parts = [cohort_dataset(spec, "training", stats_file, cache=cache, cache_dir=cache_dir)]
    source = Path(datalist) if datalist is not None else spec.datalist
    if read_datalist(spec, source).get(UNLABELLED_SPLIT):
        parts.append(cohort_dataset(spec, UNLABELLED_SPLIT, stats_file, datalist=source, cache=cache, cache_dir=cache_dir,
                                    require_labels=False))
    record: dict[str, Any] = {"epochs": int(epochs), "temperature": float(temperature), "seed": int(seed),
                              "unlabelled_patients": len(parts[1]) if len(parts) > 1 else 0, "modalities": {}}
    names = spec.modality_names
    # a histogram-only encoder has no convolution to pretrain
    convolutional = [m for m in spec.image_modalities if has_convolutional_backbone(network.encoders[m.name])]
    observed = _observed_images(parts, {m.name: names.index(m.name) for m in convolutional}) if convolutional else {}
    trained = 0
    for m in convolutional:
        backbone = encoder_backbone(network.encoders[m.name])
        images = observed[m.name]
        if images is None or images.shape[0] < 2:
            logger.warning("self-supervised pretraining: modality '%s' has fewer than 2 observed images; skipped", m.name)
            continue
        try:  # e.g. a mirror_3d encoder reads the volume and its asymmetry (twice the channels), not the volume
            with torch.no_grad():
                backbone.eval()(images[:1])
        except RuntimeError as err:
            raise DyMoInputError(
                f"modality '{m.name}': its encoder backbone does not read the preprocessed image of shape "
                f"{tuple(images.shape[1:])} ({str(err).splitlines()[0]}); self-supervised pretraining needs an encoder "
                "that reads the image itself (no mirror_3d)."
            ) from None
        dims = images.ndim - 2
        views = contrastive_views(dims, images.shape[2:], flip=flip_2d and dims == 2)
        with tqdm(total=int(epochs), desc=f"self-supervised {m.name} ({images.shape[0]} images)",
                  disable=bar_disabled(progress), leave=False) as bar:
            history = pretrain_contrastive(
                backbone, images, views, epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
                device=device, seed=seed, progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
            )
        path = self_supervised_file(model_dir, m.name)
        torch.save({k: v.cpu() for k, v in backbone.state_dict().items()}, path)
        record["modalities"][m.name] = {"images": int(images.shape[0]), "file": path.name, "loss": history}
        logger.info("self-supervised %s: %d images, loss %.3f -> %.3f, %s", m.name, images.shape[0], history[0],
                    history[-1], path)
        trained += 1
    if not trained:
        raise DyMoInputError(
            f"cohort {spec.name}: no convolutional image encoder to pretrain (image backbones 'none' read histograms "
            "only); set the plan's backbone_2d / backbone_3d to 'small' or a MONAI backbone."
        )
    (model_dir / "self_supervised.json").write_text(json.dumps(record, indent=1))
    return record


def load_self_supervised(network: Any, model_dir: str | Path, spec: CohortSpec) -> dict[str, int]:
    """Start each image encoder of ``network`` from ``<model_dir>/self_supervised_<modality>.pt``; returns
    ``{modality: tensors loaded}``.

    Raises:
        FileNotFoundError: a modality's file is missing (run the pretrain stage with the same ``--model_dir``).
    """
    loaded = {}
    record = Path(model_dir) / "self_supervised.json"
    if not record.is_file():
        raise DyMoFileNotFoundError(
            f"the plan asks for self-supervised encoders but {record} is not there: run the pretrain stage with the "
            "same --model_dir first."
        )
    for name in json.loads(record.read_text())["modalities"]:
        path = self_supervised_file(model_dir, name)
        if name not in network.encoders:
            raise DyMoInputError(f"{path}: modality '{name}' is not in the cohort's fusion network ({spec.name}).")
        loaded[name] = load_pretrained_backbone(network.encoders[name], path, name=name)["loaded"]
    logger.info("image encoders started from the self-supervised backbones: %s", loaded)
    return loaded
