"""``prepare_batch`` callables of the monai_dymo engines: a MONAI batch dict -> what an iteration computes with.

They follow MONAI's ``prepare_batch(batchdata, device, non_blocking, **kwargs)`` convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import convert_to_tensor

from monai_dymo.keys import DyMoKeys
from monai_dymo.presence import align_present

__all__ = ["PrepareDyMoBatch", "PrepareDyMoEvalBatch", "PrepareRecoveryBatch", "unpack_batch"]


def unpack_batch(batch: Sequence[Any]) -> tuple[Any, Any, tuple, dict[str, Any]]:
    """``(inputs, targets, args, kwargs)`` of a ``prepare_batch`` result in MONAI's 2-tuple or 4-tuple form."""
    if len(batch) == 2:
        inputs, targets = batch
        return inputs, targets, (), {}
    inputs, targets, args, kwargs = batch
    return inputs, targets, args, kwargs


class PrepareDyMoBatch:
    """``prepare_batch`` for DyMo batches: ``(inputs {name: [B, ...]}, labels [B], (), {"present": [B, M] | None})``.

    Follows MONAI's ``prepare_batch(batchdata, device, non_blocking, **kwargs)`` convention (4-tuple form).

    Args:
        modalities: modality names; each is a key of the batch dict.
        label_key: key of the class labels (``[B]`` or ``[B, 1]`` integer classes).
        present_key: key of the ``present`` mask ``[B, M]``; used when the batch has it (None: never).
        require_label: raise when the batch has no labels (training); False gives ``labels=None`` (inference).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        label_key: str = DyMoKeys.LABEL,
        present_key: str | None = DyMoKeys.PRESENT,
        require_label: bool = True,
    ) -> None:
        self.modalities = tuple(modalities)
        self.label_key = label_key
        self.present_key = present_key
        self.require_label = require_label

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, tuple, dict[str, Any]]:
        if not isinstance(batchdata, Mapping):
            raise ValueError(f"expected a batch dictionary, found {type(batchdata).__name__}.")
        required = (*self.modalities, self.label_key) if self.require_label else self.modalities
        missing = [k for k in required if k not in batchdata]
        if missing:
            raise ValueError(f"batch lacks key(s) {missing}; it has {sorted(map(str, batchdata.keys()))}.")

        def plain(x: Any, **to_kwargs: Any) -> torch.Tensor:  # MetaTensor -> plain tensor on the engine's device
            x = convert_to_tensor(x, track_meta=False, wrap_sequence=True)
            return x.to(device=device, non_blocking=non_blocking, **to_kwargs)

        inputs = {m: plain(batchdata[m], **kwargs) for m in self.modalities}
        labels = batchdata.get(self.label_key)
        if labels is not None:
            labels = plain(labels)
        present = None
        if self.present_key is not None and batchdata.get(self.present_key) is not None:
            present = plain(align_present(batchdata[self.present_key], self.modalities, type(self).__name__))
        return inputs, labels, (), {"present": present}


class PrepareDyMoEvalBatch(PrepareDyMoBatch):
    """:class:`PrepareDyMoBatch` with the label optional (evaluation and inference without labels):
    ``(inputs {modality: [B, ...]}, label or None, (), {"present": [B, M] or None})``; the evaluator hands ``present``
    to :class:`~monai_dymo.inferers.DyMoInferer` as ``inferer(inputs, network, present=...)``.

    Args:
        modality_keys: batch keys of the modalities, in the network's modality order.
        present_key, label_key: batch keys of ``present`` and of the labels.
    """

    def __init__(
        self,
        modality_keys: Sequence[str],
        present_key: str = DyMoKeys.PRESENT,
        label_key: str = DyMoKeys.LABEL,
    ) -> None:
        super().__init__(modality_keys, label_key=label_key, present_key=present_key, require_label=False)


class PrepareRecoveryBatch:
    """``prepare_batch`` callable: MONAI batch dict -> ``(inputs, present)`` on ``device``.

    Args:
        modalities: modality keys to take from the batch (those absent from a batch are left out: the network then
            treats them as missing for every patient, which ``present`` must agree with).
        present_key: key of the ``BoolTensor[B, M]`` observed mask; when the batch has no such key every modality
            must be in the batch and is taken as observed.
    """

    def __init__(self, modalities: Sequence[str], present_key: str = DyMoKeys.PRESENT) -> None:
        self.modalities = tuple(modalities)
        self.present_key = present_key

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if not isinstance(batchdata, Mapping):
            raise ValueError(f"recovery batches must be dicts, got {type(batchdata).__name__}.")
        inputs: dict[str, torch.Tensor] = {}
        for name in self.modalities:
            if name in batchdata and batchdata[name] is not None:
                x = torch.as_tensor(batchdata[name])
                inputs[name] = x.to(device=device, non_blocking=non_blocking, **kwargs) if device is not None else x
        if self.present_key in batchdata:
            present = align_present(batchdata[self.present_key], self.modalities, type(self).__name__)
        else:
            absent = [m for m in self.modalities if m not in inputs]
            if absent:
                raise ValueError(
                    f"batch has no '{self.present_key}' mask and lacks modality(ies) {absent}; "
                    "cannot tell what is observed."
                )
            batch = next(iter(inputs.values())).shape[0]
            present = torch.ones(batch, len(self.modalities), dtype=torch.bool)
        if device is not None:
            present = present.to(device=device, non_blocking=non_blocking)
        return inputs, present
