"""A duck-typed DyMo fusion network for the tests (no networks import): see :class:`ToyFusionNet`."""

from __future__ import annotations

import torch


class ToyFusionNet(torch.nn.Module):
    """Duck-typed DyMo network for tests: ``encode`` (one linear token per modality, inputs ``[B, in_dim]``),
    ``fuse(tokens, subset)`` -> ``(logits [R, C], L2-normalised z [R, D])`` (the visible tokens summed), ``modalities``;
    ``encoded`` logs every ``encode`` input, ``fuse_rows`` counts the fused rows."""

    def __init__(self, names=("ct", "pet", "clin"), in_dim=4, d=6, proj_dim=5, num_classes=3):
        super().__init__()
        self.modalities = tuple(names)
        self.num_classes = num_classes
        self.proj_dim = proj_dim
        self.enc = torch.nn.ModuleDict({n: torch.nn.Linear(in_dim, d) for n in names})
        self.mix = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, num_classes)
        self.proj = torch.nn.Linear(d, proj_dim)
        self.encoded: list[dict[str, torch.Tensor]] = []
        self.fuse_rows = 0

    def encode(self, inputs):
        self.encoded.append({k: v.clone() for k, v in inputs.items()})
        return {n: self.enc[n](inputs[n]).unsqueeze(1) for n in self.modalities}

    def fuse(self, tokens, subset):
        self.fuse_rows += subset.shape[0]
        w = subset.float()
        h = torch.tanh(self.mix(sum(tokens[n][:, 0] * w[:, i : i + 1] for i, n in enumerate(self.modalities))))
        return self.head(h), torch.nn.functional.normalize(self.proj(h), dim=-1)

    def forward(self, inputs, subset):
        return self.fuse(self.encode(inputs), subset)


class ConstantRecovery:
    """Recovery filling every modality with ``value``, scribbling over the observed ones too (which DyMo must
    ignore); ``seen`` logs its inputs, ``calls`` counts its calls."""

    def __init__(self, value=0.5, names=("ct", "pet", "clin")):
        self.modalities = tuple(names)
        self.value = value
        self.seen: list[dict[str, torch.Tensor]] = []

    @property
    def calls(self) -> int:
        return len(self.seen)

    def __call__(self, inputs, present):
        self.seen.append({k: v.clone() for k, v in inputs.items()})
        return {k: torch.full_like(v, self.value) for k, v in inputs.items()}
