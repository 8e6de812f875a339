"""The natural missingness of the brain cohort: absent, corrupt and DICOM sequences, blank or missing clinical rows
and cells, all independent of the class."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from monai_dymo.data.brain_design import _ABSENT_P, CLINICAL_FIELDS, SEQUENCES

__all__ = ["plan_missingness"]


def _default_count(rate: float, n: int) -> int:
    return max(1, int(round(rate * n)))


def plan_missingness(
    num_patients: int,
    seed: int = 0,
    absent_rates: Mapping[str, float] | None = None,
    num_corrupt: int | None = None,
    num_dicom: int | None = None,
    num_missing_clinical: int | None = None,
    num_blank_clinical: int | None = None,
    blank_field_rate: float = 0.06,
    sentinel_rate: float = 0.03,
) -> dict[str, Any]:
    """Which sequences are absent, corrupt or DICOM and which clinical cells / rows are blank or missing.

    Independent of the class and of the voxels (streams ``[seed, 2]`` and ``[seed, 3]``). Guarantees: a corrupt file
    only where another sequence of the patient stays readable (one corrupt file per patient at most); a missing or
    all-blank clinical row only where a readable sequence remains; patients with no sequence at all keep a complete
    clinical row; DICOM only for readable sequences (mostly T1). See :func:`generate_brain_cohort` for the arguments.

    Returns:
        ``present`` bool ``[N, 4]`` (not absent), ``readable`` bool ``[N, 4]`` (present and not corrupt), ``corrupt``
        ``{(i, k): kind}``, ``dicom`` set of ``(i, k)``, ``missing_rows`` / ``blank_rows`` sets of ``i``, ``no_image``
        int array, ``cell_blank`` bool ``[N, 4]`` (clinical field order), ``ldh_sentinel`` / ``sex_unknown`` bool ``[N]``.
    """
    n = int(num_patients)
    rates = dict(_ABSENT_P if absent_rates is None else absent_rates)
    mrng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    present = np.stack([mrng.random(n) >= rates.get(s, 0.0) for s in SEQUENCES], axis=1)  # [n, 4]
    n_corrupt = _default_count(0.01, n) if num_corrupt is None else int(num_corrupt)
    n_missing_rows = _default_count(0.03, n) if num_missing_clinical is None else int(num_missing_clinical)
    n_blank_rows = _default_count(0.005, n) if num_blank_clinical is None else int(num_blank_clinical)
    no_image = np.flatnonzero(~present.any(1))  # clinical-only patients: keep their clinical row complete
    # corrupt files only where at least one other sequence stays readable
    corrupt: dict[tuple[int, int], str] = {}
    kinds = ("zero_bytes", "random_bytes", "truncated_gzip")
    pairs = [(i, k) for i in range(n) for k in range(4) if present[i, k] and present[i].sum() >= 2]
    order = mrng.permutation(len(pairs))
    used: set[int] = set()
    want = [kind for kind in kinds for _ in range(n_corrupt)]
    for j in order:
        if not want:
            break
        i, k = pairs[j]
        if i in used:
            continue
        corrupt[(i, k)] = want.pop(0)
        used.add(i)
    readable = present.copy()
    for (i, k) in corrupt:
        readable[i, k] = False
    # clinical rows: missing entirely / all blank, only for patients that keep a readable image
    eligible = [i for i in mrng.permutation(n) if readable[i].any() and present[i].any()]
    missing_rows = set(int(i) for i in eligible[:n_missing_rows])
    blank_rows = set(int(i) for i in eligible[n_missing_rows:n_missing_rows + n_blank_rows])
    cell_blank = mrng.random((n, len(CLINICAL_FIELDS))) < blank_field_rate
    ldh_sentinel = mrng.random(n) < sentinel_rate
    sex_unknown = mrng.random(n) < sentinel_rate
    cell_blank[no_image] = False
    ldh_sentinel[no_image] = False
    sex_unknown[no_image] = False
    # DICOM: stream [seed, 3]; mostly T1, among readable sequences
    drng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    n_dicom = _default_count(0.03, n) if num_dicom is None else int(num_dicom)
    dicom: set[tuple[int, int]] = set()
    for i in drng.permutation(n):
        if len(dicom) >= n_dicom:
            break
        k = 0 if drng.random() < 0.7 else int(drng.integers(4))
        if readable[i, k]:
            dicom.add((int(i), k))
    return {"present": present, "readable": readable, "corrupt": corrupt, "dicom": dicom, "missing_rows": missing_rows,
            "blank_rows": blank_rows, "no_image": no_image, "cell_blank": cell_blank, "ldh_sentinel": ldh_sentinel,
            "sex_unknown": sex_unknown}
