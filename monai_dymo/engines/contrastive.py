"""Self-supervised pretraining of an image backbone by contrasting two random views of each image (SimCLR).

No label is read: each image is drawn twice through random ``views`` (e.g. MONAI's random affine, zoom, intensity
and cut-out transforms), the backbone's last feature map is averaged to one vector per view, a two-layer projection
head maps it to ``projection_dim``, and MONAI's :class:`~monai.losses.ContrastiveLoss` (normalised temperature-scaled
cross-entropy) pulls the two views of an image together and pushes the other images of the batch away. The backbone
(not the head) is what a classifier then starts from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from monai.losses import ContrastiveLoss
from monai.utils import set_determinism

__all__ = ["ProjectionHead", "pretrain_contrastive"]

class ProjectionHead(nn.Module):
    """Global average of a feature map, then ``Linear -> ReLU -> Linear``: ``[B, C, *S]`` -> ``[B, projection_dim]``."""

    def __init__(self, in_channels: int, hidden: int = 128, projection_dim: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, projection_dim))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.mlp(feature_map.flatten(2).mean(-1))


def _feature_channels(backbone: nn.Module, sample: torch.Tensor) -> int:
    """Channels of ``backbone``'s feature map for one image ``sample [1, C_in, *S]``."""
    with torch.no_grad():
        was_training = backbone.training
        backbone.eval()
        channels = int(backbone(sample).shape[1])
        backbone.train(was_training)
    return channels


def pretrain_contrastive(
    backbone: nn.Module,
    images: torch.Tensor,
    views: Callable[[torch.Tensor], torch.Tensor],
    epochs: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    temperature: float = 0.5,
    projection_dim: int = 64,
    device: str | torch.device = "cpu",
    seed: int | None = 0,
    progress: Callable[[int, float], Any] | None = None,
) -> list[float]:
    """Train ``backbone`` in place on ``images`` without labels; returns the mean loss of every epoch.

    Args:
        backbone: ``[B, C_in, *S]`` -> feature map ``[B, C, *S']`` (e.g. a token encoder's convolution stages,
            :func:`~monai_dymo.networks.encoder_backbone`).
        images: ``[N, C_in, *S]``, the preprocessed images (N >= 2).
        views: one random view of ONE image ``[C_in, *S]`` -> ``[C_in, *S]``; drawn twice per image and epoch
            (a MONAI ``Randomizable`` is seeded with ``seed``).
        epochs, batch_size, lr, weight_decay: AdamW with a cosine schedule over ``epochs``; the last incomplete batch
            is dropped (a contrastive batch needs at least two images).
        temperature: of the contrastive loss.
        progress: called after every epoch with ``(epoch, mean loss)`` (e.g. a progress bar's update).
    """
    if images.ndim < 3 or images.shape[0] < 2:
        raise ValueError(f"contrastive pretraining needs at least 2 images [N, C, *S], found shape {tuple(images.shape)}.")
    if seed is not None:
        set_determinism(seed=seed)
        if hasattr(views, "set_random_state"):  # MONAI random transforms draw from their own generator
            views.set_random_state(seed=int(seed))
    device = torch.device(device)
    backbone = backbone.to(device).train()
    head = ProjectionHead(_feature_channels(backbone, images[:1].to(device)), projection_dim=projection_dim).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    criterion = ContrastiveLoss(temperature=temperature)
    batch_size = max(2, min(int(batch_size), images.shape[0]))
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    history: list[float] = []
    for epoch in range(int(epochs)):
        order = torch.randperm(images.shape[0], generator=generator)
        losses = []
        for start in range(0, images.shape[0] - batch_size + 1, batch_size):
            batch = images[order[start : start + batch_size]]
            first = torch.stack([views(x) for x in batch]).to(device)
            second = torch.stack([views(x) for x in batch]).to(device)
            loss = criterion(head(backbone(first)), head(backbone(second)))
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"contrastive pretraining: the loss is {value} at epoch {epoch + 1}.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(value)
        scheduler.step()
        history.append(sum(losses) / max(1, len(losses)))
        if progress is not None:
            progress(epoch + 1, history[-1])
    backbone.eval()
    return history
