"""Clinical-table recovery with scikit-learn's ``IterativeImputer`` behind the recovery-network interface.

A clinical *modality* is a named group of fields; its tensor is ``[B, F]`` (float, NaN = field missing inside an
observed group). The imputer is fitted on a training table in which missing values are NaN (a whole missing group is
all-NaN or absent), and at inference every missing group is filled from the observed fields of the same patient.

Persistence: :meth:`IterativeImputerRecovery.save` writes a :mod:`joblib` file holding a plain dict ``{"format":
"monai_dymo.IterativeImputerRecovery", "version": 1, "sklearn_version": ..., "config": ..., "imputer": ...}``;
:meth:`IterativeImputerRecovery.load` checks the format tag and version and warns when the file was written with another
scikit-learn version. joblib files are pickles: only load files from a trusted source (e.g. your own bundle).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_dymo.networks.recovery.base import (
    UNKNOWN_CODE,
    RecoveryNetwork,
    check_recovery_inputs,
    merge_recovered,
    missing_rows,
)

__all__ = ["IterativeImputerRecovery", "IMPUTER_FILE_FORMAT"]

#: tag stored in files written by :meth:`IterativeImputerRecovery.save`.
IMPUTER_FILE_FORMAT = "monai_dymo.IterativeImputerRecovery"
_IMPUTER_FILE_VERSION = 1


def _as_numpy(x: Any) -> np.ndarray:
    """Float64 copy (never a view of the caller's data)."""
    if isinstance(x, torch.Tensor):
        return np.array(x.detach().cpu().to(torch.float64).numpy(), dtype=np.float64, copy=True)
    return np.array(x, dtype=np.float64, copy=True)


class IterativeImputerRecovery(RecoveryNetwork):
    """Recover missing clinical field groups with a fitted :class:`sklearn.impute.IterativeImputer`.

    Args:
        field_groups: modality (group) name -> number of fields ``F`` or list of field names (the column names used when
            fitting from a :class:`pandas.DataFrame`). The order gives the columns of ``present``.
        categorical: optional group name -> field indices (or ``{index: number of classes}``) holding class indices;
            imputed values there are rounded (and clipped to ``[0, K-1]`` when ``K`` is given); a code ``-1``
            (category unseen in training) is treated as missing.
        fill_observed_fields: also fill NaN fields inside *observed* groups (off by default, because observed
            modalities are otherwise returned bit for bit).
        max_iter, random_state, sample_posterior, initial_strategy, tol: passed to ``IterativeImputer``.
        imputer_kwargs: any other ``IterativeImputer`` arguments (e.g. ``{"estimator": ...}``).

    The object is a parameter-free :class:`torch.nn.Module` so it can be used wherever a recovery network is
    (``.eval()``, ``.to(device)``); outputs follow the device and dtype of the inputs.
    """

    def __init__(
        self,
        field_groups: Mapping[str, int | Sequence[str]],
        categorical: Mapping[str, Sequence[int] | Mapping[int, int]] | None = None,
        fill_observed_fields: bool = False,
        max_iter: int = 10,
        random_state: int | None = 0,
        sample_posterior: bool = False,
        initial_strategy: str = "mean",
        tol: float = 1e-3,
        imputer_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(field_groups, Mapping) or not field_groups:
            raise ValueError("`field_groups` must be a non-empty mapping of group name -> number of fields or names.")
        names: dict[str, list[str]] = {}
        for g, spec in field_groups.items():
            if isinstance(spec, (int, np.integer)):
                if spec < 1:
                    raise ValueError(f"group '{g}' must have at least one field, got {spec}.")
                names[str(g)] = [f"{g}_{i}" for i in range(int(spec))]
            else:
                cols = [str(c) for c in spec]
                if not cols:
                    raise ValueError(f"group '{g}' must have at least one field.")
                names[str(g)] = cols
        all_cols = [c for cols in names.values() for c in cols]
        if len(set(all_cols)) != len(all_cols):
            raise ValueError("field names must be unique across groups.")
        super().__init__(list(names), {g: (len(c),) for g, c in names.items()})
        self.field_names: dict[str, list[str]] = names
        self.nan_tolerant = self.modalities
        self.categorical: dict[str, dict[int, int | None]] = {}
        for g, spec in (categorical or {}).items():
            if g not in names:
                raise ValueError(f"categorical fields given for unknown group '{g}'; groups are {list(names)}.")
            fields = dict(spec) if isinstance(spec, Mapping) else {int(i): None for i in spec}
            checked: dict[int, int | None] = {}
            for i, k in fields.items():
                if not 0 <= int(i) < len(names[g]):
                    raise ValueError(
                        f"categorical field index {i} out of range for group '{g}' ({len(names[g])} fields)."
                    )
                checked[int(i)] = None if k is None else int(k)
            self.categorical[g] = checked
        self.fill_observed_fields = bool(fill_observed_fields)
        self.imputer_params: dict[str, Any] = {
            "max_iter": int(max_iter),
            "random_state": random_state,
            "sample_posterior": bool(sample_posterior),
            "initial_strategy": initial_strategy,
            "tol": float(tol),
            "keep_empty_features": True,
            **dict(imputer_kwargs or {}),
        }
        self.imputer: Any = None
        offsets = np.cumsum([0] + [len(names[g]) for g in self.modalities])
        self._slices = {g: slice(int(offsets[i]), int(offsets[i + 1])) for i, g in enumerate(self.modalities)}
        self.num_fields = int(offsets[-1])

    # ------------------------------------------------------------------ fitting
    def _table_to_matrix(self, table: Any, present: Any | None) -> np.ndarray:
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - pandas is a dependency
            pd = None
        if pd is not None and isinstance(table, pd.DataFrame):
            cols = [c for g in self.modalities for c in self.field_names[g]]
            missing_cols = [c for c in cols if c not in table.columns]
            if missing_cols:
                raise ValueError(f"training table lacks column(s) {missing_cols}.")
            mat = np.array(table[cols].to_numpy(dtype=np.float64, na_value=np.nan), copy=True)
        elif isinstance(table, Mapping):
            unknown = [k for k in table if k not in self.modalities]
            if unknown:
                raise ValueError(f"unknown group name(s) {unknown}; groups are {list(self.modalities)}.")
            sizes = {int(_as_numpy(v).shape[0]) for v in table.values()}
            if len(sizes) != 1:
                raise ValueError(
                    f"all groups of the training table need the same number of rows, found {sorted(sizes)}."
                )
            n = sizes.pop()
            mat = np.full((n, self.num_fields), np.nan)
            for g in self.modalities:
                if g not in table:
                    continue
                v = _as_numpy(table[g])
                f = len(self.field_names[g])
                if v.ndim != 2 or v.shape[1] != f:
                    raise ValueError(f"group '{g}': expected shape [N, {f}], found {list(v.shape)}.")
                mat[:, self._slices[g]] = v
        else:
            mat = _as_numpy(table)
            if mat.ndim != 2 or mat.shape[1] != self.num_fields:
                raise ValueError(f"training table must have shape [N, {self.num_fields}], found {list(mat.shape)}.")
            mat = mat.copy()
        if present is not None:
            pres = _as_numpy(present).astype(bool)
            if pres.shape != (mat.shape[0], self.num_modalities):
                raise ValueError(
                    f"`present` must have shape [{mat.shape[0]}, {self.num_modalities}], found {list(pres.shape)}."
                )
            for m, g in enumerate(self.modalities):
                mat[~pres[:, m], self._slices[g]] = np.nan
        return self._unknown_categories_to_nan(mat)

    def _unknown_categories_to_nan(self, mat: np.ndarray) -> np.ndarray:
        """A categorical code ``-1`` (category unseen in training, see ``ClinicalFieldsd``) carries no value: NaN."""
        for g, fields in self.categorical.items():
            for i in fields:
                col = self._slices[g].start + i
                mat[mat[:, col] == UNKNOWN_CODE, col] = np.nan
        return mat

    def fit(self, table: Any, present: Any | None = None) -> IterativeImputerRecovery:
        """Fit the imputer on a training table.

        Args:
            table: a :class:`pandas.DataFrame` with the configured field names as columns, a mapping group name ->
                ``[N, F]`` array/tensor (groups may be absent), or an ``[N, sum F]`` array in group order;
                NaN = missing.
            present: optional ``[N, M]`` bool; groups marked False are treated as missing whatever their values.
        """
        from sklearn.experimental import enable_iterative_imputer  # noqa: F401
        from sklearn.impute import IterativeImputer

        mat = self._table_to_matrix(table, present)
        if mat.shape[0] < 2:
            raise ValueError(f"need at least 2 training rows to fit the imputer, got {mat.shape[0]}.")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ee]arly stopping criterion not reached.*")
            self.imputer = IterativeImputer(**self.imputer_params).fit(mat)
        return self

    @property
    def is_fitted(self) -> bool:
        return self.imputer is not None

    # ------------------------------------------------------------------ recovery
    def _round_categorical(self, group: str, values: np.ndarray) -> np.ndarray:
        for i, k in self.categorical.get(group, {}).items():
            col = np.round(values[:, i])
            if k is not None:
                col = np.clip(col, 0, k - 1)
            values[:, i] = col
        return values

    def impute_matrix(self, matrix: np.ndarray) -> np.ndarray:
        """Impute an ``[N, sum F]`` float matrix (NaN = missing) with the fitted imputer."""
        if self.imputer is None:
            raise RuntimeError("IterativeImputerRecovery is not fitted; call fit() or load() first.")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ee]arly stopping criterion not reached.*")
            return self.imputer.transform(matrix)

    def _impute(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> np.ndarray:
        """Imputed ``[B, sum F]`` matrix for a validated batch (rows of missing groups start as NaN)."""
        batch = present.shape[0]
        mat = np.full((batch, self.num_fields), np.nan)
        pres = present.detach().cpu().numpy()
        for m, g in enumerate(self.modalities):
            if g in inputs:
                vals = _as_numpy(inputs[g])
                vals[~pres[:, m]] = np.nan
                mat[:, self._slices[g]] = vals
        return self.impute_matrix(self._unknown_categories_to_nan(mat))

    def _rows_of(
        self, filled: np.ndarray, group: str, rows: torch.Tensor, like: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Imputed values of ``rows`` of ``group``, in the dtype/device of ``like`` (float32 / ``device`` if None)."""
        vals = self._round_categorical(group, filled[rows.cpu().numpy()][:, self._slices[group]])
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
        return torch.as_tensor(vals, dtype=dtype, device=like.device if like is not None else device)

    def _generated(
        self, filled: np.ndarray, inputs: Mapping[str, torch.Tensor], present: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for m, g in enumerate(self.modalities):
            rows = missing_rows(present, m)
            if rows.numel():
                out[g] = self._rows_of(filled, g, rows, inputs.get(g), present.device)
        return out

    def generate(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Impute all groups of the batch in one ``transform`` call and return the missing rows."""
        return self._generated(self._impute(inputs, present), inputs, present)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor, strict: bool = True
    ) -> dict[str, torch.Tensor]:
        """Recover missing groups (see :class:`~monai_dymo.networks.recovery.base.RecoveryNetwork`); with
        ``fill_observed_fields`` NaN fields inside observed groups are filled as well."""
        tensors, present_b = check_recovery_inputs(
            inputs, present, self.modalities, self.modality_shapes, strict=strict, allow_nonfinite=self.nan_tolerant
        )
        filled = self._impute(tensors, present_b)
        out = merge_recovered(
            tensors, present_b, self._generated(filled, tensors, present_b), self.modalities, self.modality_shapes
        )
        if self.fill_observed_fields:
            for m, g in enumerate(self.modalities):
                x = out[g]
                nan_rows = torch.isnan(x).any(dim=1) & present_b[:, m].to(x.device)
                if bool(nan_rows.any()):
                    rows = torch.nonzero(nan_rows, as_tuple=False).flatten()
                    x = x.clone()
                    sub = x[rows]
                    x[rows] = torch.where(torch.isnan(sub), self._rows_of(filled, g, rows, x, x.device), sub)
                    out[g] = x
        return out

    # ------------------------------------------------------------------ persistence
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as plain types (the fitted imputer is not part of it)."""
        params = dict(self.imputer_params)
        params.pop("keep_empty_features", None)
        base = {k: params.pop(k) for k in ("max_iter", "random_state", "sample_posterior", "initial_strategy", "tol")}
        return {
            "field_groups": {g: list(c) for g, c in self.field_names.items()},
            "categorical": {g: dict(v) for g, v in self.categorical.items()},
            "fill_observed_fields": self.fill_observed_fields,
            **base,
            "imputer_kwargs": params,
        }

    def save(self, path: str | Path) -> None:
        """Write the configuration and the fitted imputer with :func:`joblib.dump` (see module docstring)."""
        import joblib
        import sklearn

        if self.imputer is None:
            raise RuntimeError("refusing to save an unfitted IterativeImputerRecovery; call fit() first.")
        joblib.dump(
            {
                "format": IMPUTER_FILE_FORMAT,
                "version": _IMPUTER_FILE_VERSION,
                "sklearn_version": sklearn.__version__,
                "config": self.get_config(),
                "imputer": self.imputer,
            },
            str(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> IterativeImputerRecovery:
        """Load a file written by :meth:`save` (a pickle: trusted files only)."""
        import joblib
        import sklearn

        payload = joblib.load(str(path))
        if not isinstance(payload, Mapping) or payload.get("format") != IMPUTER_FILE_FORMAT:
            raise ValueError(f"{path} is not a {IMPUTER_FILE_FORMAT} file.")
        if int(payload.get("version", -1)) > _IMPUTER_FILE_VERSION:
            raise ValueError(
                f"{path} has file version {payload.get('version')}, newer than supported ({_IMPUTER_FILE_VERSION})."
            )
        if payload.get("sklearn_version") != sklearn.__version__:
            warnings.warn(
                f"{path} was written with scikit-learn {payload.get('sklearn_version')}, running "
                f"{sklearn.__version__}; check that the imputer still behaves as expected.",
                stacklevel=2,
            )
        obj = cls(**payload["config"])
        obj.imputer = payload["imputer"]
        return obj
