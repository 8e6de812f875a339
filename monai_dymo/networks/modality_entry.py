"""The networks' modality spec: a list of :class:`ModalityEntry` (or mappings with its fields, e.g. from a bundle
config) naming each modality's kind (``image2d`` / ``image3d`` / ``clinical``), size, channels and clinical layout.
It knows no cohort file and no transform; the cohort code converts its spec and plan into it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from monai_dymo.errors import DyMoInputError

__all__ = ["KINDS", "ModalityEntry", "modality_entries"]

KINDS = ("image2d", "image3d", "clinical")


@dataclass(frozen=True)
class ModalityEntry:
    """One modality: ``image2d`` ``[B, channels, H, W]``, ``image3d`` ``[B, channels, H, W, D]``, or ``clinical``
    ``[B, num_continuous + len(categorical)]`` (continuous fields first, then one index per categorical field with
    ``categorical[i]`` levels; ``fields``: their names in that order). ``unit_range``: image intensities in [0, 1]
    (else z-scored); ``pretrained``: weights file of this modality's image backbone."""

    name: str
    kind: str
    spatial_size: tuple[int, ...] = ()
    channels: int = 1
    num_continuous: int = 0
    categorical: tuple[int, ...] = ()
    fields: tuple[str, ...] = ()
    unit_range: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DyMoInputError(f"modality '{self.name}': kind {self.kind!r} is not one of {list(KINDS)}.")
        object.__setattr__(self, "spatial_size", tuple(int(s) for s in self.spatial_size))
        object.__setattr__(self, "categorical", tuple(int(k) for k in self.categorical))
        object.__setattr__(self, "fields", tuple(str(f) for f in self.fields))
        object.__setattr__(self, "channels", int(self.channels or 1))

    @property
    def spatial_dims(self) -> int:
        """2 for ``image2d``, 3 for ``image3d``, 0 for ``clinical``."""
        return {"image2d": 2, "image3d": 3}.get(self.kind, 0)

    @property
    def categorical_index(self) -> dict[int, int]:
        """``{field index: levels}`` of the categorical fields of a clinical group (they follow the continuous)."""
        return {self.num_continuous + j: k for j, k in enumerate(self.categorical)}


def modality_entries(modalities: Sequence[ModalityEntry | Mapping[str, Any]]) -> list[ModalityEntry]:
    """The entries of a modality spec given as entries or mappings (``DyMoInputError`` naming unknown fields)."""
    known = {f.name for f in fields(ModalityEntry)}
    out = []
    for m in modalities:
        if isinstance(m, ModalityEntry):
            out.append(m)
            continue
        unknown = sorted(set(m) - known)
        if unknown:
            raise DyMoInputError(f"modality entry {dict(m)}: unknown field(s) {unknown}; known: {sorted(known)}.")
        out.append(ModalityEntry(**m))
    return out
