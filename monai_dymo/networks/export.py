"""The fusion network for MONAI's bundle tools: TorchScript / ``torch.export`` form and the input/output check.

Why a separate module: :class:`~monai_dymo.networks.fusion.DynamicFusionTransformer` cannot be scripted or exported as
it is. Its ``forward(inputs, subset)`` takes a mapping of modality tensors that it validates by name (and unwraps
MONAI ``MetaTensor`` inputs), and its fast ``fuse`` packs each row's visible tokens without padding: the packing groups
rows by their visible-token count (``torch.unique_consecutive`` then a Python loop over ``.tolist()`` group sizes),
which is data-dependent control flow that neither TorchScript nor ``torch.export`` can capture. MONAI's
``ckpt_export`` (TorchScript) and ``verify_net_in_out`` (one ``image`` tensor in, one tensor out) therefore do not
apply to it directly.

:class:`FusionExport` computes the same logits as the network's reference path ``fuse_full`` (the whole sequence
``[CLS, all tokens]`` through the transformer blocks with a key mask hiding modalities outside each row's subset)
with fixed shapes and no Python-side checks, from the network's own modules: its ``state_dict`` keys are those of the
network, so a ``fusion.pt`` loads into it unchanged. It scripts (``torch.jit.script``, used by ``ckpt_export`` of
the bundle's ``configs/export.yaml``) and exports (:func:`export_fusion`, ``torch.export``).
:func:`verify_fusion_in_out` is the bundle's ``verify_net_in_out`` for these dict inputs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

__all__ = ["FusionExport", "export_fusion", "example_fusion_inputs", "verify_fusion_in_out"]

logger = logging.getLogger(__name__)


class FusionExport(nn.Module):
    """Scriptable / exportable logits of a ``DynamicFusionTransformer`` for a per-sample subset of modalities.

    ``forward(inputs, present)``: ``inputs`` a dict ``{name: [B, ...]}`` holding every modality of the network (absent
    ones as placeholders, e.g. zeros), ``present`` a bool tensor ``[B, M]`` (columns in ``modalities`` order, True =
    use this modality; every row needs at least one True) -> logits ``[B, C]``. Unlike the network it does not check
    its inputs (an all-False row is not refused); check them before calling.

    Args:
        network: a ``DynamicFusionTransformer``; its modules and parameters are shared, not copied.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        for attr in ("modalities", "encoders", "token_norms", "token_modality", "blocks", "classifier"):
            if not hasattr(network, attr):
                raise ValueError(f"FusionExport needs a DynamicFusionTransformer; {type(network).__name__} has no {attr}.")
        self.modalities: list[str] = [str(m) for m in network.modalities]
        self.num_classes = int(network.num_classes)
        self.encoders = network.encoders
        self.token_norms = network.token_norms
        self.modality_embedding = network.modality_embedding
        self.cls_token = network.cls_token
        self.pos_embedding = network.pos_embedding
        self.blocks = network.blocks
        self.norm = network.norm
        self.classifier = network.classifier
        self.projection = network.projection  # unused here; kept so that the state_dict keys equal the network's
        self.register_buffer("token_modality", network.token_modality.clone(), persistent=False)
        # logit_fusion "product": the sum of the log-probabilities of each present modality fused alone
        self.product: bool = getattr(network, "logit_fusion", "transformer") == "product"

    def forward(self, inputs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        raw: list[torch.Tensor] = []
        for name, encoder in self.encoders.items():
            raw.append(encoder(inputs[name]))
        normed: list[torch.Tensor] = []
        i = 0
        for _, token_norm in self.token_norms.items():
            normed.append(token_norm(raw[i]))
            i += 1
        tokens = torch.cat(normed, dim=1)  # [B, N, dim], modality by modality
        tokens = tokens + self.modality_embedding[self.token_modality] + self.pos_embedding[:, 1:]
        batch = tokens.shape[0]
        cls = (self.cls_token + self.pos_embedding[:, :1]).to(tokens.dtype).expand(batch, -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        subset = present.to(torch.bool)
        if not self.product:
            return self._classify(x, subset)
        total = torch.zeros(batch, self.num_classes, dtype=x.dtype, device=x.device)
        for m in range(len(self.modalities)):
            alone = torch.zeros_like(subset)
            alone[:, m] = True
            logp = torch.log_softmax(self._classify(x, alone), dim=-1)
            total = total + logp * subset[:, m : m + 1].to(x.dtype)
        return total

    def _classify(self, x: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
        """The transformer's logits ``[B, C]`` for the sequence ``x [B, 1 + N, dim]`` with ``subset [B, M]`` visible."""
        visible = torch.cat([torch.ones_like(subset[:, :1]), subset[:, self.token_modality]], dim=1)
        hidden = ~visible
        for block in self.blocks:
            x = block(x, src_key_padding_mask=hidden)
        return self.classifier(self.norm(x[:, 0]))


def example_fusion_inputs(
    network_data_format: Mapping[str, Any], batch_size: int = 2, present_key: str = "present"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random inputs shaped as a bundle's ``network_data_format`` describes them: ``({name: [B, C, *spatial]},
    present [B, M])``; every row of ``present`` has at least one True."""
    inputs: dict[str, torch.Tensor] = {}
    spec_inputs = network_data_format.get("inputs", {})
    for name, spec in spec_inputs.items():
        if name == present_key:
            continue
        shape = (batch_size, int(spec["num_channels"]), *(int(s) for s in spec["spatial_shape"]))
        dtype = getattr(torch, str(spec.get("dtype", "float32")))
        low, high = (list(spec.get("value_range") or []) + [0.0, 1.0])[:2]
        inputs[name] = torch.rand(shape).mul(high - low).add(low).to(dtype)
    if present_key not in spec_inputs:
        raise ValueError(f"network_data_format has no '{present_key}' input (inputs: {sorted(spec_inputs)}).")
    num_mod = int(spec_inputs[present_key]["num_channels"])
    generator = torch.Generator().manual_seed(0)
    present = torch.rand(batch_size, num_mod, generator=generator) < 0.5
    present[torch.arange(batch_size), torch.randint(num_mod, (batch_size,), generator=generator)] = True
    return inputs, present


def verify_fusion_in_out(
    network: nn.Module, meta_file: str | os.PathLike | Mapping[str, Any], batch_size: int = 2
) -> torch.Tensor:
    """The bundle's ``verify_net_in_out`` for the fusion network's dict inputs: build random inputs from the
    metadata's ``network_data_format`` (one tensor per modality plus ``present``), check that the input names and the
    ``present`` channels are the network's modalities in order, run the network and check the ``pred`` output's
    channels and dtype. Returns the logits ``[B, C]``; ``ValueError`` naming the first difference."""
    if isinstance(meta_file, Mapping):
        meta = dict(meta_file)
    else:
        with open(os.fspath(meta_file)) as f:
            meta = json.load(f)
    fmt = meta.get("network_data_format", meta)
    modalities = [str(m) for m in network.modalities]
    names = [n for n in fmt.get("inputs", {}) if n != "present"]
    if names != modalities:
        raise ValueError(f"metadata inputs {names} are not the network's modalities {modalities} (names and order).")
    channels = fmt["inputs"]["present"].get("channel_def", {})
    if channels and [channels[str(i)] for i in range(len(channels))] != modalities:
        raise ValueError(f"metadata 'present' channels {channels} are not the network's modalities {modalities}.")
    inputs, present = example_fusion_inputs(fmt, batch_size)
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            logits, _ = network({k: v.to(device) for k, v in inputs.items()}, present.to(device))
    finally:
        network.train(was_training)
    pred = fmt["outputs"]["pred"]
    if logits.ndim != 2 or logits.shape[1] != int(pred["num_channels"]):
        raise ValueError(f"output shape {tuple(logits.shape)} does not match num_channels {pred['num_channels']}.")
    if logits.dtype != getattr(torch, str(pred.get("dtype", "float32"))):
        raise ValueError(f"output dtype {logits.dtype} does not match {pred['dtype']}.")
    logger.info(f"fusion network inputs {names} + present and output pred {tuple(logits.shape)} verified.")
    return logits


def export_fusion(network: nn.Module, example: tuple[dict[str, torch.Tensor], torch.Tensor]) -> Any:
    """``torch.export.export`` of :class:`FusionExport` (network in eval mode) with the batch dimension dynamic; a
    :class:`~monai_dymo.networks.FusionEnsemble` exports its mean-probability logits (its ``exportable()``).

    ``example``: ``(inputs, present)`` as :func:`example_fusion_inputs` returns (batch size at least 2). The program is
    saved with ``torch.export.save(program, "fusion.pt2")`` and run with ``program.module()(inputs, present)``.
    """
    module = (network.exportable() if hasattr(network, "exportable") else FusionExport(network)).eval()
    inputs, present = example
    batch = torch.export.Dim("batch", min=1)
    shapes = ({name: {0: batch} for name in inputs}, {0: batch})
    with torch.no_grad():
        return torch.export.export(module, (inputs, present), dynamic_shapes=shapes)
