"""Mean-probability ensemble of fusion networks with DyMo's ``encode`` / ``fuse`` interface (e.g. the K fold networks
of a cross-validation).

Members share their ``modalities`` (names and order), classes and metric. For a subset ``S``, member ``k`` gives
logits ``l_k(S)`` and a projection ``z_k(S)`` (width ``D_k``); the ensemble gives

- ``logits(S) = log( (1/K) sum_k softmax(l_k(S)) )``: its softmax is the members' mean probability, its argmax their
  mean-probability vote;
- ``z(S) = concat_k( z_k(S) ) / sqrt(K)`` (cosine: each ``z_k`` L2-normalised first), so that ``z`` has unit norm and,
  against any concatenation ``P = concat_k(P_k) / sqrt(K)`` of per-member unit vectors, ``z . P = (1/K) sum_k
  z_k . P_k``: the members' mean cosine (Euclidean: ``||z - P||^2`` is the members' mean squared distance).

DyMo's rewards on the ensemble. The calibration (:func:`~monai_dymo.calibration.fit_calibration`) is fitted on the
ensemble like on any network: per subset and class, the prototype ``mu_{S,c}`` is the mean of the concatenated
projection, which is ``concat_k(mu_{k,S,c}) / sqrt(K)`` (each member's own class mean, scaled), and ``sigma_{S,c}`` is
the spread of the ensemble's distance ``d = 1 - z . mu_{S,c} = (1/K) sum_k (1 - z_k . mu_{k,S,c})``, the members'
mean cosine distance to their own class means. So the quality score ``q(S)`` is the softmax of the members' mean
cosine to the overall prototypes, the in-class Gaussian score ``p(S)`` is that of the mean cosine distance to the
class ``argmax`` of the mean probability, and the calibration factor and the reward follow from these as for one
network (docs/method.md §4). Nothing in the selection, the calibration or the certification knows it is an
ensemble.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fuse_protocol import takes_index

__all__ = ["FusionEnsemble"]


class FusionEnsemble(nn.Module):
    """Ensemble of ``K`` fusion networks (each with ``encode`` / ``fuse`` / ``modalities``) as one fusion network.

    - ``encode(inputs) -> {modality: [B, K, n_m, d]}``: each member's tokens, stacked at dim 1 (the members must give
      tokens of one shape per modality, e.g. the K folds of one configuration).
    - ``fuse(tokens, subset [R, M], index=None) -> (logits [R, C], z [R, sum_k D_k])``: see the module docstring
      (log of the mean probability; concatenated, normalised projections divided by ``sqrt(K)``).
    - ``forward(inputs, subset=None)``: ``fuse(encode(inputs), subset)`` (``None``: every modality), as the fusion
      network's ``forward``.

    An ensemble of one member has that member's probabilities and projection. The ensemble is built for inference,
    in eval mode (members included; ``train()`` switches them back).

    Args:
        members: the fusion networks.

    Attributes:
        modalities, num_classes, metric: the members'; ``proj_dim``: ``sum_k D_k`` when the members say their width.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("FusionEnsemble needs at least one member network.")
        for i, m in enumerate(members):
            lacking = [a for a in ("encode", "fuse", "modalities") if not hasattr(m, a)]
            if lacking:
                raise ValueError(f"ensemble member {i} ({type(m).__name__}) lacks {lacking}.")
        self.members = nn.ModuleList(members)
        self.modalities: tuple[str, ...] = tuple(str(n) for n in members[0].modalities)
        for attr, default in (("modalities", None), ("num_classes", None), ("metric", "cosine")):
            values = [getattr(m, attr, default) for m in members]
            if attr == "modalities":
                values = [tuple(str(n) for n in v) for v in values]
            if any(v != values[0] for v in values):
                raise ValueError(f"ensemble members differ in {attr}: {values}.")
        self.num_classes = getattr(members[0], "num_classes", None)
        self.metric: str = getattr(members[0], "metric", "cosine")
        widths = [getattr(m, "proj_dim", None) for m in members]
        self.proj_dim = None if any(w is None for w in widths) else int(sum(widths))
        self._by_index = [takes_index(m.fuse) for m in members]
        self.eval()

    @property
    def num_members(self) -> int:
        return len(self.members)

    @classmethod
    def from_weights(
        cls,
        network: nn.Module | Callable[[], nn.Module],
        paths: Sequence[str | os.PathLike],
        map_location: torch.device | str | None = "cpu",
    ) -> FusionEnsemble:
        """The ensemble of ``len(paths)`` members with the weights of ``paths`` (one file per member).

        ``network``: a built network (each member is a copy of it; it stays as it is) or a function that builds one.
        The weights are read by :func:`monai_dymo.load_weights` (one-line errors naming the file).
        """
        from monai_dymo.checkpoints import load_weights

        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError("FusionEnsemble.from_weights needs at least one weights file.")
        members = []
        for p in paths:
            member = copy.deepcopy(network) if isinstance(network, nn.Module) else network()
            members.append(load_weights(member, p, map_location=map_location))
        return cls(members)

    # ------------------------------------------------------------------ DyMo interface
    def encode(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{name: [B, ...]}`` -> ``{name: [B, K, n_m, d]}`` (member ``k``'s tokens at ``[:, k]``)."""
        per_member = [m.encode(inputs) for m in self.members]
        out: dict[str, torch.Tensor] = {}
        for name in self.modalities:
            shapes = {tuple(t[name].shape) for t in per_member}
            if len(shapes) > 1:
                raise ValueError(
                    f"ensemble members give tokens of different shapes for modality {name!r}: {sorted(shapes)}; "
                    "the members must share the token layout (e.g. the folds of one configuration)."
                )
            out[name] = torch.stack([t[name] for t in per_member], dim=1)
        return out

    def fuse(
        self, tokens: Mapping[str, torch.Tensor], subset: torch.Tensor, index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [R, C], z [R, sum_k D_k])`` of per-row subsets of the tokens of :meth:`encode`.

        Args:
            tokens: ``{name: [B, K, n_m, d]}``.
            subset: BoolTensor ``[R, M]`` (or ``[M]``).
            index: optional LongTensor ``[R]``: row ``r`` fuses sample ``index[r]`` (default: row ``r`` = sample ``r``).
        """
        log_probs, projections = [], []
        for k, member in enumerate(self.members):
            own = {name: t[:, k] for name, t in tokens.items()}
            if index is None:
                logits, z = member.fuse(own, subset)
            elif self._by_index[k]:
                logits, z = member.fuse(own, subset, index=index)
            else:
                logits, z = member.fuse({name: t.index_select(0, index) for name, t in own.items()}, subset)
            log_probs.append(torch.log_softmax(logits.float(), dim=-1))
            projections.append(F.normalize(z, dim=-1) if self.metric == "cosine" else z)
        k = len(self.members)
        mean_log_prob = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(k)
        return mean_log_prob, torch.cat(projections, dim=-1) / math.sqrt(k)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], subset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``fuse(encode(inputs), subset)``; ``subset`` ``[B, M]`` or ``[M]``, ``None``: every modality."""
        tokens = self.encode(inputs)
        if subset is None:
            batch = next(iter(tokens.values())).shape[0]
            device = next(iter(tokens.values())).device
            subset = torch.ones(batch, len(self.modalities), dtype=torch.bool, device=device)
        return self.fuse(tokens, subset)

    def exportable(self) -> nn.Module:
        """The scriptable / exportable logits of the ensemble (:func:`~monai_dymo.networks.export_fusion`): the log of
        the mean of the members' :class:`~monai_dymo.networks.FusionExport` probabilities."""
        return EnsembleExport(self)


class EnsembleExport(nn.Module):
    """``forward(inputs, present) -> log((1/K) sum_k softmax(FusionExport_k(inputs, present)))``, ``[B, C]``; as
    :class:`~monai_dymo.networks.FusionExport`, its ``state_dict`` keys are the ensemble's."""

    def __init__(self, ensemble: FusionEnsemble) -> None:
        super().__init__()
        from .export import FusionExport

        self.members = nn.ModuleList([FusionExport(m) for m in ensemble.members])
        self.log_k = math.log(len(ensemble.members))

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        log_probs: list[torch.Tensor] = []
        for member in self.members:
            log_probs.append(torch.log_softmax(member(inputs, present), dim=-1))
        return torch.logsumexp(torch.stack(log_probs), dim=0) - self.log_k
