"""Simulated missingness: drop observed modalities at a rate, or by a per-sample pattern read from a mask CSV.

Used for training augmentation (rate) and for reproducible benchmarks (pattern files, so that every method sees the
same missing modalities).

Mask CSV format (:mod:`monai_dymo.missing_patterns_io`, the same files as ``monai_dymo.data``'s pattern files): one
row per sample, one column per modality (header = modality names), ``1`` = observed, ``0`` = missing, at least one
observed per row; an optional first ``index`` column gives the sample index of each row (without it, row ``i`` is
sample ``i``). :func:`write_missing_patterns` writes this format (with the ``index`` column);
:func:`read_missing_patterns` reads both variants.

Rate mode: every observed modality is dropped independently with probability ``rate``; when that would drop all of
them and ``keep_at_least_one`` is set, one of the patient's observed modalities, chosen uniformly, is kept (so the
effective drop rate is slightly below ``rate`` for patients with few observed modalities).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai.config import KeysCollection, PathLike
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai_dymo.errors import DyMoInputError
from monai_dymo.keys import DyMoKeys, Reason
from monai_dymo.missing_patterns_io import INDEX_COLUMN, check_missing_rate, read_pattern_table, write_pattern_table
from monai_dymo.presence import keep_one_observed
from monai_dymo.transforms.utils import (
    REASON_META_KEY,
    format_reason,
    get_patient_id,
    is_observed,
    placeholder_like,
    resolve_modality_order,
    update_presence,
)

__all__ = [
    "read_missing_patterns",
    "write_missing_patterns",
    "RandSimulateMissingModalities",
    "RandSimulateMissingModalitiesd",
    "RandSimulateMissingModalitiesD",
    "RandSimulateMissingModalitiesDict",
    "SimulateMissingModalities",
    "SimulateMissingModalitiesd",
    "SimulateMissingModalitiesD",
    "SimulateMissingModalitiesDict",
]


def read_missing_patterns(
    path: PathLike, modalities: Sequence[str], index_column: str = INDEX_COLUMN
) -> dict[int, np.ndarray]:
    """Read a mask CSV; ``{sample index: bool array [M] over modalities}`` (True = observed).

    The file is read and validated by :func:`monai_dymo.missing_patterns_io.read_pattern_table`.

    Raises:
        ValueError: missing file, a modality without column, a value other than 0/1, a non-integer or duplicated
            index, a row with every modality missing (naming the file, row and column), a file name asking for a
            missing rate outside [0, 1].
    """
    try:
        indices, masks = read_pattern_table(path, modalities, index_column)
    except FileNotFoundError as e:
        raise DyMoInputError(str(e)) from e
    return {int(i): masks[k] for k, i in enumerate(indices)}


write_missing_patterns = write_pattern_table
"""Write ``masks`` (bool ``[N, M]``, True = observed) as a mask CSV with an ``index`` column
(:func:`monai_dymo.missing_patterns_io.write_pattern_table`)."""


class RandSimulateMissingModalities(RandomizableTransform):
    """Array form: ``present BoolTensor[M] -> BoolTensor[M]`` with observed entries dropped at ``rate``.

    Args:
        rate: probability that each observed modality is dropped, in [0, 1].
        keep_at_least_one: when all observed modalities would be dropped, keep one chosen uniformly among them.
        prob: probability that the simulation is applied to a sample at all.
    """

    def __init__(self, rate: float = 0.0, keep_at_least_one: bool = True, prob: float = 1.0) -> None:
        RandomizableTransform.__init__(self, prob)
        self.rate = check_missing_rate(rate, f"{type(self).__name__}: rate")
        self.keep_at_least_one = keep_at_least_one
        self._drop = np.zeros(0, dtype=bool)

    def randomize(self, data: Any) -> None:
        """``data``: bool array of the observed modalities; draws ``self._drop`` (bool array, same length)."""
        observed = np.asarray(data, dtype=bool)
        super().randomize(None)
        u = self.R.rand(observed.size)
        self._drop = observed & (u < self.rate) if self._do_transform else np.zeros_like(observed)
        self._drop = self._keep_one(observed, self._drop)

    def _keep_one(self, observed: np.ndarray, drop: np.ndarray) -> np.ndarray:
        if not self.keep_at_least_one:
            return drop.copy()
        return keep_one_observed(observed, drop, self._draw_kept)

    def _draw_kept(self, observed: np.ndarray) -> np.ndarray:
        """One-hot scores ``[R, M]``: for each row, one of its observed modalities chosen uniformly."""
        score = np.zeros(observed.shape)
        for r, row in enumerate(observed):
            score[r, int(self.R.choice(np.flatnonzero(row)))] = 1.0
        return score

    def __call__(self, present: torch.Tensor, randomize: bool = True) -> torch.Tensor:  # type: ignore[override]
        observed = torch.as_tensor(present, dtype=torch.bool)
        if randomize:
            self.randomize(observed.cpu().numpy())
        return observed & ~torch.as_tensor(self._drop, dtype=torch.bool, device=observed.device)


class RandSimulateMissingModalitiesd(RandomizableTransform, MapTransform):
    """Drop observed modalities of a sample at a rate or by a mask-CSV pattern; mark them ``"simulated missing"``.

    A dropped modality gets reason ``"simulated missing: ..."``, ``present`` False, and its tensor is replaced by zeros
    of the same shape and meta (a placeholder; ``keep_data=True`` keeps the data and only marks it); a clinical
    group's fields become NaN (missing), its ``field_mask`` is cleared and its ``field_notes`` entry says so.
    Modalities already missing are left as they are (a pattern cannot make a missing modality observed).

    Args:
        keys: modalities that may be dropped.
        rate: drop probability per observed modality (rate mode).
        pattern_csv: mask CSV (pattern mode); the row is chosen by ``d[index_key]``.
        index_key: sample key holding the sample index (pattern mode).
        keep_at_least_one: keep one observed modality (uniformly chosen) when everything would be dropped.
        prob: probability that the simulation is applied to a sample.
        keep_data: keep the image of a dropped modality instead of zeroing it.
        modalities: order of the presence vector (see ``LoadModalitiesd``).
        present_key, reasons_key, field_mask_key, field_notes_key, error_key, patient_id_key: sample keys.

    Raises:
        ValueError: bad rate, rate together with a pattern, unknown modality key, a malformed pattern CSV, or (when
            called) a sample without index or whose index is not in the CSV, naming the patient.
    """

    def __init__(
        self,
        keys: KeysCollection,
        rate: float = 0.0,
        pattern_csv: PathLike | None = None,
        index_key: str = "index",
        keep_at_least_one: bool = True,
        prob: float = 1.0,
        keep_data: bool = False,
        modalities: Sequence[str] | None = None,
        present_key: str = DyMoKeys.PRESENT,
        reasons_key: str = DyMoKeys.REASONS,
        field_mask_key: str = DyMoKeys.FIELD_MASK,
        field_notes_key: str = DyMoKeys.FIELD_NOTES,
        error_key: str | None = DyMoKeys.ERROR,
        patient_id_key: str = DyMoKeys.PATIENT_ID,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob)
        if pattern_csv is not None and rate:
            raise ValueError("RandSimulateMissingModalitiesd: give either rate or pattern_csv, not both.")
        self.names = [str(k) for k in self.keys]
        self.modalities = resolve_modality_order(self.keys, modalities, type(self).__name__)
        self.simulator = RandSimulateMissingModalities(rate, keep_at_least_one, prob=1.0)
        self.pattern_csv = None if pattern_csv is None else Path(pattern_csv)
        self.patterns = None if pattern_csv is None else read_missing_patterns(pattern_csv, self.names)
        self.index_key = index_key
        self.keep_data = keep_data
        self.present_key = present_key
        self.reasons_key = reasons_key
        self.field_notes_key = field_notes_key
        self.field_mask_key = field_mask_key
        self.error_key = error_key
        self.patient_id_key = patient_id_key

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandSimulateMissingModalitiesd:
        super().set_random_state(seed, state)
        self.simulator.set_random_state(state=self.R)
        return self

    def _pattern(self, d: Mapping[Hashable, Any]) -> tuple[np.ndarray, str]:
        pid = get_patient_id(d, self.patient_id_key)
        if self.index_key not in d:
            raise ValueError(
                f"RandSimulateMissingModalitiesd: patient {pid!r} has no {self.index_key!r} key to look up its row in "
                f"{self.pattern_csv}."
            )
        raw = d[self.index_key]
        index = int(raw.item() if hasattr(raw, "item") else raw)
        assert self.patterns is not None
        if index not in self.patterns:
            raise ValueError(
                f"RandSimulateMissingModalitiesd: sample index {index} (patient {pid!r}) is not in {self.pattern_csv}."
            )
        return self.patterns[index], f"pattern {self.pattern_csv.name} index {index}"  # type: ignore[union-attr]

    def randomize(self, data: Any) -> None:
        super().randomize(None)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reasons: dict[str, str] = dict(d.get(self.reasons_key) or {})
        observed = np.asarray([is_observed(reasons.get(n)) for n in self.names], dtype=bool)
        self.randomize(None)
        if self.patterns is None:
            self.simulator.randomize(observed)
            drop = self.simulator._drop if self._do_transform else np.zeros_like(observed)
            details = f"rate {self.simulator.rate:g}"
        else:
            pattern, details = self._pattern(d)
            drop = observed & ~pattern if self._do_transform else np.zeros_like(observed)
            drop = self.simulator._keep_one(observed, drop)
        reason = format_reason(Reason.SIMULATED, details)
        field_mask = dict(d.get(self.field_mask_key) or {})
        field_notes = dict(d.get(self.field_notes_key) or {})
        for name, key, dropped in zip(self.names, self.keys, drop):
            if not dropped:
                continue
            reasons[name] = reason
            if key in d and isinstance(d[key], torch.Tensor):
                if not self.keep_data:  # a clinical group's fields become missing (NaN), like ClinicalFieldsd's
                    d[key] = placeholder_like(d[key], reason, math.nan if name in field_mask else 0.0)
                elif hasattr(d[key], "meta"):
                    d[key] = d[key].clone()
                    d[key].meta[REASON_META_KEY] = reason
            if name in field_mask:
                field_mask[name] = torch.zeros_like(field_mask[name])
            if name in field_notes:
                field_notes[name] = "all fields hidden (simulated missing)"
        if self.field_mask_key in d:
            d[self.field_mask_key] = field_mask
        if self.field_notes_key in d:
            d[self.field_notes_key] = field_notes
        update_presence(d, reasons, self.modalities, self.present_key, self.reasons_key, self.error_key)
        return d


RandSimulateMissingModalitiesD = RandSimulateMissingModalitiesDict = RandSimulateMissingModalitiesd

# the same transforms without MONAI's ``Rand`` prefix for random transforms
SimulateMissingModalities = RandSimulateMissingModalities
SimulateMissingModalitiesd = SimulateMissingModalitiesD = SimulateMissingModalitiesDict = RandSimulateMissingModalitiesd
