"""Losses of DyMo's robust representation learning (method section 2).

- :class:`PrototypeLoss`: ``CE(softmax(z · Pᵀ / τ), y)`` against given class prototypes ``P [C, D]`` (cosine metric),
  or ``CE(softmax(-‖z - P_c‖² / τ), y)`` (Euclidean variant: squared distances, unnormalised ``z``).
- :class:`SubsetAugmentedLoss`: cross-entropy on the logits plus ``λ`` times the prototype loss (once switched on),
  each averaged within a sampled subset and then over the subsets. It owns the current prototypes as buffers, so
  saving it (or :class:`monai_dymo.handlers.prototypes.PrototypeRefreshHandler`) with MONAI's ``CheckpointSaver``
  saves them.
- :class:`PrototypeAccumulator`: class means of detached projections collected over an epoch.
- :func:`class_weights`: per-class weights of both cross-entropies from the training split's class counts
  (``"balanced"``: a rare class weighs as much in the loss as a common one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai.utils import LossReduction

from .similarity import check_metric, prototype_logits

__all__ = [
    "prototype_logits",
    "PrototypeLoss",
    "SubsetAugmentedLoss",
    "PrototypeAccumulator",
    "CLASS_WEIGHTINGS",
    "class_weights",
]

#: names understood by :func:`class_weights`
CLASS_WEIGHTINGS: tuple[str, ...] = ("balanced", "none")


def class_weights(counts: Sequence[int], weighting: str = "balanced") -> torch.Tensor | None:
    """Per-class weights ``[C]`` of the training loss from the training split's class counts ``n_c``.

    ``"balanced"``: ``w_c = n / (C' · n_c)`` over the ``C'`` classes with patients (a class without any gets 0: it has
    no row to weigh), so that ``Σ_c n_c · w_c = n`` (the weights average 1 over the training patients, the loss keeps
    its scale) and the expected loss of a batch is the class-balanced one (every class counts ``1 / C'``);
    ``"none"``: None (every row weighs 1).

    Raises:
        ValueError: an unknown name (the message lists the known ones), a negative count or no patient at all.
    """
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {weighting!r}.")
    n_c = torch.as_tensor([float(c) for c in counts], dtype=torch.float32)
    if n_c.ndim != 1 or n_c.numel() < 1 or bool((n_c < 0).any()) or float(n_c.sum()) <= 0:
        raise ValueError(f"class counts must be non-negative with at least one patient, got {list(counts)}.")
    if weighting == "none":
        return None
    seen = n_c > 0
    weights = torch.zeros_like(n_c)
    weights[seen] = n_c.sum() / (int(seen.sum()) * n_c[seen])
    return weights


def _check_targets(target: torch.Tensor, num_rows: int, num_classes: int) -> torch.Tensor:
    if target.ndim == 2 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 1 or target.shape[0] != num_rows:
        raise ValueError(f"labels must be class indices of shape [{num_rows}], found shape {tuple(target.shape)}.")
    if target.is_floating_point():
        if not torch.equal(target, target.round()):
            raise ValueError("labels must be integer class indices, found non-integer values.")
    target = target.long()
    if num_rows and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes - 1}], found values in [{int(target.min())}, {int(target.max())}]."
        )
    return target


def _group_mean(values: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values [N]`` within each group, then over the non-empty groups (plain mean when ``groups`` is None)."""
    if groups is None:
        return values.mean()
    if groups.shape != values.shape:
        raise ValueError(f"groups must have shape {tuple(values.shape)}, found {tuple(groups.shape)}.")
    groups = groups.long()
    size = int(groups.max()) + 1 if groups.numel() else 1
    counts = torch.bincount(groups, minlength=size).to(values.dtype)
    sums = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    used = counts > 0
    return (sums[used] / counts[used]).mean()


class PrototypeLoss(_Loss):
    """Prototype cross-entropy ``CE(softmax(z · Pᵀ / τ), y)`` (cosine) or ``CE(softmax(-‖z - P_c‖² / τ), y)``
    (Euclidean).

    Args:
        temperature: ``τ`` (0.1 in DyMo).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-row losses ``[N]``).
        metric: ``"cosine"`` or ``"euclidean"``.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        reduction: LossReduction | str = LossReduction.MEAN,
        metric: str = "cosine",
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.metric = check_metric(metric)

    def forward(self, z: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """``z [N, D]`` (L2-normalised for cosine), ``target [N]`` class indices, ``prototypes [C, D]``."""
        logits = prototype_logits(z, prototypes, self.temperature, self.metric)
        target = _check_targets(target, z.shape[0], prototypes.shape[0])
        return F.cross_entropy(logits, target, reduction=self.reduction)


class SubsetAugmentedLoss(nn.Module):
    """DyMo training loss over the rows of several sampled subsets.

    ``loss = mean_k [ mean_{rows of k} CE(logits, y) + λ · active · mean_{rows of k} CE(z·Pᵀ/τ, y) ]`` over subsets k
    (Euclidean metric: ``-‖z - P_c‖² / τ`` in place of ``z·Pᵀ/τ``)

    With ``class_weights`` ``w [C]`` every row's two cross-entropies are multiplied by ``w[y]`` before the same
    means (so with the weights of :func:`class_weights`, averaging 1 over the training patients, the expected loss is
    the class-balanced one). The prototype term is weighted too: it is a cross-entropy over the same classes, added
    at weight ``λ`` once active, and unweighted it would let the common class shape ``z`` (what calibration and the
    rewards score) again.

    Buffers (saved in ``state_dict``): ``prototypes [C, D]`` (zeros until first refreshed) and ``prototype_active``
    (bool scalar; the prototype term is added only when True, set by
    :class:`monai_dymo.handlers.prototypes.PrototypeRefreshHandler` after the warm-up epochs). ``class_weights``
    ``[C]`` (or None) is a buffer too (it moves with ``.to(device)``), but not saved: it belongs to the training split.

    Args:
        num_classes: ``C``.
        proj_dim: ``D``.
        prototype_weight: ``λ`` (1 in DyMo).
        temperature: ``τ`` (0.1 in DyMo).
        metric: ``"cosine"`` or ``"euclidean"`` (the fusion network's metric), see :class:`PrototypeLoss`.
        label_smoothing: label smoothing of the classifier's cross-entropy (``torch.nn.functional.cross_entropy``'s;
            0: none, DyMo's); the prototype term is never smoothed.
        class_weights: per-class weights ``[C]`` of both cross-entropies (e.g. :func:`class_weights`); None: 1 each.
    """

    def __init__(
        self,
        num_classes: int,
        proj_dim: int,
        prototype_weight: float = 1.0,
        temperature: float = 0.1,
        metric: str = "cosine",
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes)
        self.proj_dim = int(proj_dim)
        self.prototype_weight = float(prototype_weight)
        self.prototype_loss = PrototypeLoss(temperature=temperature, reduction=LossReduction.NONE, metric=metric)
        self.register_buffer("prototypes", torch.zeros(self.num_classes, self.proj_dim))
        self.register_buffer("prototype_active", torch.tensor(False))
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone()
            if (
                tuple(class_weights.shape) != (self.num_classes,)
                or not bool(torch.isfinite(class_weights).all())
                or bool((class_weights < 0).any())
                or not bool((class_weights > 0).any())
            ):
                raise ValueError(
                    f"class_weights must be {self.num_classes} finite non-negative numbers, not all 0, got "
                    f"{class_weights.tolist()}."
                )
        self.register_buffer("class_weights", class_weights, persistent=False)

    @property
    def temperature(self) -> float:
        return self.prototype_loss.temperature

    @property
    def metric(self) -> str:
        return self.prototype_loss.metric

    @property
    def active(self) -> bool:
        """Whether the prototype term is currently added to the loss."""
        return bool(self.prototype_active)

    def set_active(self, active: bool) -> None:
        self.prototype_active.fill_(bool(active))

    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Replace the prototypes (``[C, D]``)."""
        if tuple(prototypes.shape) != tuple(self.prototypes.shape):
            raise ValueError(
                f"prototypes must have shape {tuple(self.prototypes.shape)}, found {tuple(prototypes.shape)}."
            )
        self.prototypes.copy_(prototypes.detach())

    def _weighted(self, rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-row losses ``[N]`` times the class weight of each row's label (unchanged without class weights)."""
        if self.class_weights is None:
            return rows
        return rows * self.class_weights.to(rows.dtype)[target]

    def classifier_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-row cross-entropy ``[N]`` of the classifier's ``logits [N, C]`` (with this loss's label smoothing),
        times each row's class weight."""
        ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=self.label_smoothing)
        return self._weighted(ce, target)

    def compute(
        self, logits: torch.Tensor, z: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """All terms: ``{"loss", "ce_loss", "prototype_loss"}`` (scalars; ``prototype_loss`` is 0 while inactive).

        Args:
            logits: ``[N, C]`` classifier outputs, one row per (subset, sample) pair.
            z: ``[N, D]`` projections of the same rows.
            target: ``[N]`` class indices.
            groups: ``[N]`` index of the sampled subset of each row (None: all rows form one subset).
        """
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [N, {self.num_classes}], found {tuple(logits.shape)}.")
        if z.ndim != 2 or z.shape != (logits.shape[0], self.proj_dim):
            raise ValueError(f"z must have shape {(logits.shape[0], self.proj_dim)}, found {tuple(z.shape)}.")
        target = _check_targets(target, logits.shape[0], self.num_classes)
        ce = _group_mean(self.classifier_loss(logits, target), groups)
        if self.active and self.prototype_weight != 0.0:
            proto = _group_mean(self._weighted(self.prototype_loss(z, target, self.prototypes), target), groups)
        else:
            proto = torch.zeros_like(ce)
        return {"loss": ce + self.prototype_weight * proto, "ce_loss": ce, "prototype_loss": proto}

    def forward(
        self, logits: torch.Tensor, z: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Total loss (see :meth:`compute`)."""
        return self.compute(logits, z, target, groups)["loss"]


class PrototypeAccumulator:
    """Running class sums of detached projections, to compute class-mean prototypes ``[C, D]`` at epoch end.

    ``update(z, y)`` pools every row it is given (all sampled subsets together); ``compute(previous)`` returns the class
    means. A class never seen since the last ``reset`` keeps its row of ``previous`` when given, otherwise
    ``compute`` raises ``ValueError`` naming the unseen classes. Sums are kept in float64.
    """

    def __init__(self, num_classes: int, proj_dim: int) -> None:
        self.num_classes = int(num_classes)
        self.proj_dim = int(proj_dim)
        self.sums = torch.zeros(self.num_classes, self.proj_dim, dtype=torch.float64)
        self.counts = torch.zeros(self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.sums = torch.zeros_like(self.sums)
        self.counts = torch.zeros_like(self.counts)

    def update(self, z: torch.Tensor, target: torch.Tensor) -> None:
        """Add rows ``z [N, D]`` with labels ``target [N]``."""
        if z.ndim != 2 or z.shape[1] != self.proj_dim:
            raise ValueError(f"z must have shape [N, {self.proj_dim}], found {tuple(z.shape)}.")
        target = _check_targets(target, z.shape[0], self.num_classes).to(z.device)
        if self.sums.device != z.device:
            self.sums, self.counts = self.sums.to(z.device), self.counts.to(z.device)
        self.sums.index_add_(0, target, z.detach().to(torch.float64))
        self.counts += torch.bincount(target, minlength=self.num_classes)

    def compute(self, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Class means ``[C, D]`` (float32; on the device of the accumulated rows)."""
        seen = self.counts > 0
        means = (self.sums / self.counts.clamp_min(1).unsqueeze(1).to(self.sums.dtype)).to(torch.float32)
        if bool(seen.all()):
            return means
        if previous is None:
            unseen = (~seen).nonzero().flatten().tolist()
            raise ValueError(f"no projection accumulated for class(es) {unseen}; pass `previous` prototypes to keep.")
        if tuple(previous.shape) != (self.num_classes, self.proj_dim):
            raise ValueError(
                f"previous prototypes must have shape {(self.num_classes, self.proj_dim)}, "
                f"found {tuple(previous.shape)}."
            )
        return torch.where(seen.unsqueeze(1), means, previous.to(means.device, torch.float32))

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sums, counts = torch.as_tensor(state["sums"]), torch.as_tensor(state["counts"])
        if tuple(sums.shape) != tuple(self.sums.shape) or tuple(counts.shape) != tuple(self.counts.shape):
            raise ValueError(
                f"accumulator state has shapes {tuple(sums.shape)}/{tuple(counts.shape)}, "
                f"expected {tuple(self.sums.shape)}/{tuple(self.counts.shape)}."
            )
        self.sums, self.counts = sums.to(torch.float64), counts.to(torch.int64)
