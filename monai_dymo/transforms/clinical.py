"""Clinical fields: encode a group of table fields as one clinical modality, with a per-field mask.

A *group* of fields (e.g. ``{"demographics": ["age", "sex"], "labs": ["crp", "wbc"]}``) is one modality. For a
group of ``F`` fields the transform outputs

- ``d[group]``: ``FloatTensor[F]`` in the group's *layout*: its continuous fields first (z-scores), then its
  categorical fields (category codes as floats), each part in the configured order; missing fields are NaN;
- ``d["field_mask"][group]``: ``BoolTensor[F]``, True where the field is present (same layout);
- ``d["field_notes"][group]``: one string naming each missing field with what the table held, e.g.
  ``"ldh = -999, age = blank"`` (``""`` when every field is present), so that a report can tell a blank cell from a
  sentinel;
- the group's reason: ``"observed"`` when at least one field is present, else ``"all fields missing: a, b, c"``
  (then the group is missing in ``d["present"]``).

Encodings (fitted on the training set with :meth:`ClinicalFieldStats.fit`, saved/loaded as JSON), done by
scikit-learn:

- continuous: ``StandardScaler``, ``(x - mean) / std`` (population std; a constant field uses std 1);
- categorical: ``OrdinalEncoder``, code ``0..K-1`` for the ``K`` categories seen in training, sorted; a value never
  seen in training is present but *unknown*: code ``-1`` (:data:`UNKNOWN_CATEGORY`). A categorical field has ``K``
  classes (:meth:`ClinicalFieldStats.num_categories`).

This is the convention of the package's clinical networks (``ClinicalTokenEncoder``, the MoPoE clinical experts and
``IterativeImputerRecovery``): NaN = missing field, ``-1`` = unknown category, so ``d[group]`` can be fed to them as
is, with the cardinalities from :meth:`ClinicalFieldStats.describe`.

Missing values: None, NaN / ``pd.NA``, empty or blank strings, the strings of ``missing_values`` (default
:data:`DEFAULT_MISSING_VALUES`: ``"NaN"``, ``"nan"``, ``"NA"``, ``"N/A"``, ``"n/a"``, ``"unknown"``) and the
configured sentinels (e.g. ``-999``; numeric sentinels also match their string form). A clinical tokenizer / recovery network gets the group's field
types and cardinalities from :meth:`ClinicalFieldStats.describe`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sklearn
from sklearn.preprocessing import OrdinalEncoder, StandardScaler

from monai.config import PathLike
from monai.transforms.transform import MapTransform, Transform
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys, Reason
from monai_dymo.transforms.utils import format_reason, get_patient_id, resolve_modality_order, update_presence

__all__ = [
    "ClinicalFieldStats",
    "ClinicalFields",
    "ClinicalFieldsd",
    "ClinicalFieldsD",
    "ClinicalFieldsDict",
    "DEFAULT_MISSING_VALUES",
    "UNKNOWN_CATEGORY",
]

logger = logging.getLogger("monai_dymo.transforms")

UNKNOWN_CATEGORY = -1
"""Code of a categorical value never seen in training (present, but of unknown category)."""

DEFAULT_MISSING_VALUES: tuple[str, ...] = ("", "NaN", "nan", "NA", "N/A", "n/a", "unknown")
"""Strings that mean "missing field" unless configured otherwise (``missing_values=``)."""


def _as_records(rows: Any) -> list[Mapping[str, Any]]:
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
        return list(rows.to_dict("records"))
    if isinstance(rows, Mapping):
        raise ValueError("ClinicalFieldStats.fit: rows must be a table or a sequence of rows, got a single mapping.")
    if hasattr(rows, "__len__") and hasattr(rows, "__getitem__"):  # list, datalist, monai Dataset / CSVDataset
        return [dict(rows[i]) for i in range(len(rows))]
    return [dict(r) for r in rows]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _scalar(value: Any) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _category_key(value: Any) -> str:
    """Canonical string of a category value (``2``, ``2.0`` and ``"2"`` are the same category)."""
    value = _scalar(value)
    if isinstance(value, bool):
        return str(value)
    if _is_number(value):
        f = float(value)
        return str(int(f)) if f.is_integer() else repr(f)
    text = str(value).strip()
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if math.isfinite(f) and f.is_integer() else text


def _row_id(row: Mapping[str, Any], i: int, patient_id_key: str) -> str:
    pid = get_patient_id(row, patient_id_key)
    return f"row {i}" if pid == "?" else pid


class ClinicalFieldStats:
    """Encoding statistics of clinical fields, fitted on training rows: scikit-learn's ``StandardScaler`` for the
    continuous fields and ``OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
    encoded_missing_value=nan)`` for the categorical ones.

    What sklearn does not know is done here: which raw values are missing (None, NaN, ``pd.NA``, blank strings,
    ``missing_values`` and ``sentinels``; they become NaN before sklearn sees them), canonical category strings
    (``2``, ``2.0`` and ``"2"`` are one category), and errors naming patient and field.

    Args:
        continuous: field -> ``(mean, std)``.
        categorical: field -> sorted vocabulary (canonical strings); category ``vocab[i]`` has code ``i``.
        sentinels: further values that mean "missing" in the table (e.g. ``-999``; numeric sentinels also match their
            string form).
        missing_values: strings that mean "missing" (compared after stripping blanks, case-sensitive); default
            :data:`DEFAULT_MISSING_VALUES` (``"NaN"``, ``"NA"``, ``"N/A"``, ``"unknown"``, ...); ``()`` keeps them as
            values.

    Attributes:
        scaler: the fitted ``StandardScaler`` over the continuous fields (None without continuous field).
        encoder: the fitted ``OrdinalEncoder`` over the categorical fields (None without categorical field).
    """

    def __init__(
        self,
        continuous: Mapping[str, Sequence[float]] | None = None,
        categorical: Mapping[str, Sequence[str]] | None = None,
        sentinels: Sequence[Any] = (),
        missing_values: Sequence[str] | None = None,
    ) -> None:
        cont = {str(k): (float(v[0]), float(v[1])) for k, v in (continuous or {}).items()}
        cat = {str(k): [str(c) for c in v] for k, v in (categorical or {}).items()}
        both = sorted(set(cont) & set(cat))
        if both:
            raise DyMoInputError(f"ClinicalFieldStats: fields {both} are both continuous and categorical.")
        self.sentinels = list(sentinels)
        self.missing_values = [str(v) for v in (DEFAULT_MISSING_VALUES if missing_values is None else missing_values)]
        self._num_sentinels = {float(s) for s in self.sentinels if _is_number(s)}
        self._str_sentinels = {str(s).strip() for s in self.sentinels} | {v.strip() for v in self.missing_values}
        self.scaler = self._make_scaler(cont)
        self.encoder = self._make_encoder(cat)
        self._continuous_fields = list(cont)
        self._categorical_fields = list(cat)
        self._column = {f: i for i, f in enumerate(cont)} | {f: i for i, f in enumerate(cat)}
        self.source: str | None = None  # the file read by :meth:`load`, named in errors

    @staticmethod
    def _make_scaler(stats: Mapping[str, tuple[float, float]]) -> StandardScaler | None:
        """A ``StandardScaler`` in the state that ``fit`` would leave, from known means and stds."""
        if not stats:
            return None
        scaler = StandardScaler()
        scaler.mean_ = np.asarray([m for m, _ in stats.values()], dtype=np.float64)
        scaler.scale_ = np.asarray([s for _, s in stats.values()], dtype=np.float64)
        scaler.var_ = scaler.scale_**2
        scaler.n_features_in_ = len(stats)
        scaler.n_samples_seen_ = 0
        return scaler

    @staticmethod
    def _make_encoder(vocabularies: Mapping[str, Sequence[str]]) -> OrdinalEncoder | None:
        """An ``OrdinalEncoder`` with the given vocabularies (codes ``0..K-1``), unknown -> -1 and NaN -> NaN."""
        if not vocabularies:
            return None
        # NaN is listed last in every field's categories so that the encoder maps it to encoded_missing_value
        categories = [np.asarray([*v, np.nan], dtype=object) for v in vocabularies.values()]
        encoder = OrdinalEncoder(
            categories=categories,
            handle_unknown="use_encoded_value",
            unknown_value=UNKNOWN_CATEGORY,
            encoded_missing_value=np.nan,
        )
        return encoder.fit(np.full((1, len(categories)), np.nan, dtype=object))

    @property
    def continuous(self) -> dict[str, tuple[float, float]]:
        """field -> ``(mean, std)`` (the scaler's ``mean_`` and ``scale_``)."""
        if self.scaler is None:
            return {}
        return {
            f: (float(m), float(s)) for f, m, s in zip(self._continuous_fields, self.scaler.mean_, self.scaler.scale_)
        }

    @property
    def categorical(self) -> dict[str, list[str]]:
        """field -> vocabulary (the encoder's ``categories_`` without the trailing NaN)."""
        if self.encoder is None:
            return {}
        return {f: [str(c) for c in cats[:-1]] for f, cats in zip(self._categorical_fields, self.encoder.categories_)}

    # ---------------------------------------------------------------- fitting / io
    @classmethod
    def fit(
        cls,
        rows: Any,
        continuous: Sequence[str] = (),
        categorical: Sequence[str] = (),
        sentinels: Sequence[Any] = (),
        patient_id_key: str = DyMoKeys.PATIENT_ID,
        missing_values: Sequence[str] | None = None,
    ) -> ClinicalFieldStats:
        """Fit on training rows (a ``pandas.DataFrame``, a list of dicts, a datalist or a ``CSVDataset``).

        Continuous fields: ``StandardScaler`` (population std; a constant field gets std 1). Categorical fields: the
        sorted categories seen. Missing values are left out of both.

        Raises:
            ValueError: a field not in the table (naming the first patient), a field given as both types, a field with
                no observed value, or a non-numeric value in a continuous field (naming patient and field).
        """
        records = _as_records(rows)
        if not records:
            raise DyMoInputError("ClinicalFieldStats.fit: no training rows.")
        probe = cls(sentinels=sentinels, missing_values=missing_values)
        columns = set().union(*(r.keys() for r in records))
        for f in (*continuous, *categorical):
            if f not in columns:
                pid = _row_id(records[0], 0, patient_id_key)
                raise DyMoInputError(
                    f"ClinicalFieldStats.fit: clinical field {f!r} is not in the table "
                    f"(patient {pid!r}; columns {sorted(map(str, columns))})."
                )
        both = sorted(set(continuous) & set(categorical))
        if both:
            raise DyMoInputError(f"ClinicalFieldStats: fields {both} are both continuous and categorical.")
        ids = [_row_id(r, i, patient_id_key) for i, r in enumerate(records)]
        num = np.asarray(
            [[probe._value(f, r.get(f), pid)[0] for f in continuous] for r, pid in zip(records, ids)], dtype=np.float64
        ).reshape(len(records), len(continuous))
        cats = np.asarray(
            [[probe._value(f, r.get(f), pid, categorical=True)[0] for f in categorical] for r, pid in zip(records, ids)],
            dtype=object,
        ).reshape(len(records), len(categorical))
        for kind, fields, observed in (
            ("continuous", continuous, ~np.isnan(num)),
            ("categorical", categorical, cats == cats),  # NaN != NaN
        ):
            empty = [f for f, seen in zip(fields, observed.any(0)) if not seen]
            if empty:
                raise DyMoInputError(f"ClinicalFieldStats.fit: {kind} field {empty[0]!r} has no observed value in the "
                                     "table.")
        stats = cls(sentinels=sentinels, missing_values=missing_values)
        if continuous:
            stats.scaler = StandardScaler().fit(num)  # NaN (missing) entries are disregarded
            stats._continuous_fields = list(continuous)
        if categorical:
            vocab = {f: sorted({c for c in cats[:, j] if c == c}) for j, f in enumerate(categorical)}
            stats.encoder = cls._make_encoder(vocab)
            stats._categorical_fields = list(categorical)
        stats._column = {f: i for i, f in enumerate(continuous)} | {f: i for i, f in enumerate(categorical)}
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "continuous": {k: {"mean": m, "std": s} for k, (m, s) in self.continuous.items()},
            "categorical": {k: list(v) for k, v in self.categorical.items()},
            "sentinels": list(self.sentinels),
            "missing_values": list(self.missing_values),
            "unknown_index": UNKNOWN_CATEGORY,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClinicalFieldStats:
        """Statistics from :meth:`to_dict`'s mapping (files without ``missing_values`` get the default).

        Raises:
            ValueError: statistics of another categorical convention (``unknown_index`` other than
                :data:`UNKNOWN_CATEGORY`, e.g. 0 from monai_dymo 0.1.0, whose codes start at 1): refit them.
        """
        unknown_index = data.get("unknown_index", UNKNOWN_CATEGORY)
        if unknown_index != UNKNOWN_CATEGORY:
            raise DyMoInputError(
                f"ClinicalFieldStats: these statistics code unseen categories as {unknown_index!r}, this version "
                f"as {UNKNOWN_CATEGORY} with categories from 0; refit them with ClinicalFieldStats.fit."
            )
        cont = {k: (v["mean"], v["std"]) for k, v in data.get("continuous", {}).items()}
        return cls(cont, data.get("categorical", {}), data.get("sentinels", ()), data.get("missing_values"))

    def save(self, path: PathLike) -> None:
        """Write the statistics as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: PathLike) -> ClinicalFieldStats:
        """Read statistics written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise DyMoFileNotFoundError(f"ClinicalFieldStats.load: statistics file not found: {p}")
        try:
            stats = cls.from_dict(json.loads(p.read_text()))
        except ValueError as e:
            raise DyMoInputError(f"{e} (file {p})") from e
        stats.source = str(p)
        return stats

    # ---------------------------------------------------------------- encoding
    @property
    def fields(self) -> list[str]:
        return [*self._continuous_fields, *self._categorical_fields]

    def __contains__(self, field: object) -> bool:
        return field in self._column

    def missing_note(self, value: Any) -> str | None:
        """Why a value counts as missing, for reports: ``"blank"`` (None, NaN, empty or blank string), the value as
        written for a missing-value string or sentinel (e.g. ``"-999"``, ``"'unknown'"``), or None if it is present."""
        if not self.is_missing(value):
            return None
        value = _scalar(value)
        if value is None or (isinstance(value, str) and not value.strip()):
            return "blank"
        if _is_number(value):
            f = float(value)
            if math.isnan(f):
                return "blank"
            return str(int(f)) if f.is_integer() else str(f)
        if isinstance(value, str):
            text = value.strip()
            return text if _is_number_text(text) else repr(text)
        return "blank"  # pd.NA, NaT and the like

    def is_missing(self, value: Any) -> bool:
        """True for None, NaN, ``pd.NA``, empty / blank strings, ``missing_values`` and ``sentinels``."""
        value = _scalar(value)
        if value is None:
            return True
        if isinstance(value, str):
            text = value.strip()
            if text == "" or text in self._str_sentinels:
                return True
            try:
                return float(text) in self._num_sentinels
            except ValueError:
                return False
        if _is_number(value):
            f = float(value)
            return math.isnan(f) or f in self._num_sentinels
        try:
            import pandas as pd

            return bool(pd.isna(value))
        except (TypeError, ValueError, ImportError):
            return False

    def _to_float(self, field: str, value: Any, patient_id: str | None) -> float:
        value = _scalar(value)
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = float("nan")
        if isinstance(value, bool) or not math.isfinite(f):
            raise DyMoInputError(f"clinical field {field!r} of patient {patient_id!r} is not a finite number: "
                                 f"{value!r}.")
        return f

    def _value(self, field: str, value: Any, patient_id: str | None, categorical: bool = False) -> tuple[Any, bool]:
        """Raw value -> ``(what sklearn gets, present)``: a float or canonical category string, or NaN if missing."""
        if self.is_missing(value):
            return math.nan, False
        return (_category_key(value) if categorical else self._to_float(field, value, patient_id)), True

    def _unfitted(self, unknown: Sequence[str]) -> str:
        where = "" if self.source is None else f" {self.source}"
        return f"ClinicalFieldStats{where}: fields {list(unknown)} have no fitted statistics (known: {self.fields})."

    def num_categories(self, field: str) -> int:
        """Number ``K`` of categories of a categorical field seen in training (codes ``0..K-1``)."""
        return len(self.categorical[field])

    def layout(self, fields: Sequence[str]) -> list[str]:
        """Order of ``fields`` in an encoded vector: continuous ones first, then categorical, each in given order."""
        unknown = [f for f in fields if f not in self]
        if unknown:
            raise DyMoInputError(self._unfitted(unknown))
        cont = set(self._continuous_fields)
        return [f for f in fields if f in cont] + [f for f in fields if f not in cont]

    def describe(self, fields: Sequence[str]) -> dict[str, Any]:
        """Layout of a group for a tokenizer: ``{"fields", "num_continuous", "categorical": {name: K}}``.

        ``list(describe(fields)["categorical"].values())`` are the ``categorical_cardinalities`` of a
        ``ClinicalTokenEncoder`` for the group.
        """
        order = self.layout(fields)
        vocab = self.categorical
        return {
            "fields": order,
            "num_continuous": sum(f not in vocab for f in order),
            "categorical": {f: len(vocab[f]) for f in order if f in vocab},
        }

    def encode_row(
        self, row: Mapping[Hashable, Any], fields: Sequence[str], patient_id: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``row[f]`` for ``f`` in ``fields`` (all in ``row``) -> ``(values float64 [F], present bool [F])``,
        in the order of ``fields``: z-scores for continuous fields, codes (``-1`` unknown) for categorical ones, NaN
        where missing."""
        unknown = [f for f in fields if f not in self]
        if unknown:
            raise DyMoInputError(self._unfitted(unknown))
        out = np.full(len(fields), np.nan)
        present = np.zeros(len(fields), dtype=bool)
        for part, transformer, names in (
            (False, self.scaler, self._continuous_fields),
            (True, self.encoder, self._categorical_fields),
        ):
            slots = [i for i, f in enumerate(fields) if (f in names)]
            if not slots:
                continue
            x = np.full((1, len(names)), np.nan, dtype=object if part else np.float64)
            for i in slots:
                x[0, self._column[fields[i]]], present[i] = self._value(fields[i], row[fields[i]], patient_id, part)
            with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):  # values built above
                encoded = transformer.transform(x)[0]  # type: ignore[union-attr]
            for i in slots:
                out[i] = encoded[self._column[fields[i]]]
        return out, present

    def encode(self, field: str, value: Any, patient_id: str | None = None) -> tuple[float, bool]:
        """``(encoded value, present)`` of one field; missing -> ``(nan, False)``."""
        values, present = self.encode_row({field: value}, [field], patient_id)
        return float(values[0]), bool(present[0])


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _encode_fields(
    stats: ClinicalFieldStats, row: Mapping[Hashable, Any], fields: Sequence[str], patient_id: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``stats.encode_row`` as tensors ``(FloatTensor[F], BoolTensor[F])``; a field not in the row is an error."""
    for f in fields:
        if f not in row:
            raise DyMoInputError(
                f"clinical field {f!r} is not in the table for patient {patient_id!r} "
                f"(sample keys {sorted(map(str, row.keys()))})."
            )
    values, mask = stats.encode_row(row, fields, patient_id)
    return torch.as_tensor(values, dtype=torch.float32), torch.as_tensor(mask, dtype=torch.bool)


def _load_stats(stats: ClinicalFieldStats | PathLike | Mapping[str, Any]) -> ClinicalFieldStats:
    if isinstance(stats, ClinicalFieldStats):
        return stats
    if isinstance(stats, Mapping):
        return ClinicalFieldStats.from_dict(stats)
    return ClinicalFieldStats.load(stats)


class ClinicalFields(Transform):
    """Encode the fields of one group from a row: ``row -> (values FloatTensor[F], mask BoolTensor[F])``.

    Args:
        fields: the group's fields; the output follows ``stats.layout(fields)`` (continuous, then categorical).
        stats: fitted :class:`ClinicalFieldStats`, or the path of its JSON file.

    Raises:
        ValueError: a field without statistics (at construction) or not in the row (naming patient and field).
    """

    def __init__(self, fields: Sequence[str], stats: ClinicalFieldStats | PathLike | Mapping[str, Any]) -> None:
        self.stats = _load_stats(stats)
        self.fields = self.stats.layout([str(f) for f in fields])

    def __call__(  # type: ignore[override]
        self, row: Mapping[Hashable, Any], patient_id: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _encode_fields(self.stats, row, self.fields, patient_id)


class ClinicalFieldsd(MapTransform):
    """Encode clinical field groups of a sample (a ``CSVDataset`` row or a datalist entry) as clinical modalities.

    Args:
        groups: group name -> its fields; the group names are this transform's keys (the output keys).
        stats: fitted :class:`ClinicalFieldStats` or the path of its JSON file.
        modalities: full modality order of the presence vector (see ``LoadModalitiesd``); every group must be in it.
        drop_fields: remove the raw field values from the sample (raw CSV values of mixed types, e.g. strings and NaN,
            would not collate into a batch).
        present_key, reasons_key, field_mask_key, error_key, patient_id_key: output / id keys.
        warn_each: log a warning per missing group and patient (False: DEBUG level).
        field_notes_key: output key of ``{group: "field = what the table held, ..."}`` for the missing fields
            (``"ldh = -999, age = blank"``; ``""`` if none is missing; the upstream reason, e.g. ``"absent: patient
            ... has no row in clinical.csv"``, when the row itself is missing); None: not written.

    A group with no field present keeps a reason already in the sample (e.g. ``"absent: ..."`` written when the
    patient has no row in the clinical table), else gets ``"all fields missing: ..."``.

    Raises:
        ValueError: a group field without statistics, a group not in ``modalities``, or (when called) a field not in
            the sample, naming patient and field.
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[str]],
        stats: ClinicalFieldStats | PathLike | Mapping[str, Any],
        modalities: Sequence[str] | None = None,
        drop_fields: bool = True,
        present_key: str = DyMoKeys.PRESENT,
        reasons_key: str = DyMoKeys.REASONS,
        field_mask_key: str = DyMoKeys.FIELD_MASK,
        error_key: str | None = DyMoKeys.ERROR,
        patient_id_key: str = DyMoKeys.PATIENT_ID,
        warn_each: bool = True,
        field_notes_key: str | None = DyMoKeys.FIELD_NOTES,
    ) -> None:
        if not groups:
            raise ValueError("ClinicalFieldsd: no clinical group configured.")
        super().__init__(list(groups), allow_missing_keys=True)
        self.modalities = resolve_modality_order(self.keys, modalities, type(self).__name__)
        stats_ = _load_stats(stats)
        self.groups = {str(g): [str(f) for f in fs] for g, fs in groups.items()}
        self.encoders = {g: ClinicalFields(fs, stats_) for g, fs in self.groups.items()}
        self.stats = stats_
        self.drop_fields = drop_fields
        self.present_key = present_key
        self.reasons_key = reasons_key
        self.field_mask_key = field_mask_key
        self.field_notes_key = field_notes_key
        self.error_key = error_key
        self.patient_id_key = patient_id_key
        self.log_level = logging.WARNING if warn_each else logging.DEBUG

    def layout(self, group: str) -> list[str]:
        """Field order of ``d[group]`` and ``d[field_mask][group]``."""
        return list(self.encoders[group].fields)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        pid = get_patient_id(d, self.patient_id_key)
        reasons: dict[str, str] = dict(d.get(self.reasons_key) or {})
        field_mask = dict(d.get(self.field_mask_key) or {})
        field_notes = dict(d.get(self.field_notes_key) or {}) if self.field_notes_key else {}
        values: dict[str, torch.Tensor] = {}
        # every group of the row in one pass through the scaler and the encoder, then split per group
        layouts = [self.layout(g) for g in self.encoders]
        all_values, all_mask = _encode_fields(self.stats, d, [f for fs in layouts for f in fs], pid)
        sizes = [len(fs) for fs in layouts]
        for group, fields, vec, mask in zip(self.encoders, layouts, all_values.split(sizes), all_mask.split(sizes)):
            values[group] = vec.clone()
            field_mask[group] = mask.clone()
            if self.field_notes_key:
                gaps = [f for f, ok in zip(fields, mask.tolist()) if not ok]
                field_notes[group] = ", ".join(f"{f} = {self.stats.missing_note(d[f])}" for f in gaps)
            if bool(mask.any()):
                reasons[group] = Reason.OBSERVED.value
            else:
                # keep a reason set upstream (e.g. "absent: patient has no row in clinical.csv")
                preset = reasons.get(group)
                if preset is None or preset == Reason.OBSERVED.value:
                    reasons[group] = format_reason(Reason.FIELDS_MISSING, ", ".join(self.groups[group]))
                elif self.field_notes_key:  # no row in the table: the cells were never there, not blank
                    field_notes[group] = preset
                logger.log(self.log_level, "patient %s, clinical group %s: marked missing (%s)", pid, group, reasons[group])
        if self.drop_fields:
            for fs in self.groups.values():
                for f in fs:
                    d.pop(f, None)
        d.update(values)
        d[self.field_mask_key] = field_mask
        if self.field_notes_key:
            d[self.field_notes_key] = field_notes
        update_presence(d, reasons, self.modalities, self.present_key, self.reasons_key, self.error_key)
        if self.error_key is not None and d[self.error_key]:
            logger.log(self.log_level, "patient %s: %s", pid, d[self.error_key])
        return d


ClinicalFieldsD = ClinicalFieldsDict = ClinicalFieldsd
