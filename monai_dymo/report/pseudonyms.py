"""Pseudonymised patient ids for reports that are shared outside the hospital.

A pseudonym is the first 16 hex digits (64 bits) of ``HMAC-SHA256(key, patient id)``: stable for one key (the same
patient gets the same pseudonym in every report written with that key, so reports can be linked), not reversible
without the key, and different for another key. Keep the key secret and out of the config files that are shared (e.g.
``pseudonymize_key: "$os.environ['DYMO_REPORT_KEY']"`` in a bundle config).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["PSEUDONYM_HEX_DIGITS", "pseudonymize_id", "pseudonymize_text", "pseudonymize_records"]

PSEUDONYM_HEX_DIGITS = 16

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[^\s:;,]*[\\/])+(?=[^\s\\/]*)")


def _key_bytes(key: str | bytes) -> bytes:
    k = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not k:
        raise ValueError("pseudonymize_key must not be empty.")
    return k


def pseudonymize_id(patient_id: Any, key: str | bytes) -> str:
    """The pseudonym of ``patient_id`` (its string form) under ``key``: 16 lowercase hex digits."""
    digest = hmac.new(_key_bytes(key), str(patient_id).encode("utf-8"), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_HEX_DIGITS]


def pseudonymize_text(text: Any, replacements: Mapping[str, str]) -> Any:
    """Free text (a reason or an error message) with folder parts of file paths removed (``/data/case0/t2.nii.gz`` ->
    ``t2.nii.gz``) and every raw id in ``replacements`` (as a whole word) replaced by its pseudonym. Non-strings are
    returned as they are."""
    if not isinstance(text, str):
        return text
    out = _PATH.sub("", text)
    for raw, pseudo in replacements.items():
        if raw:
            out = re.sub(rf"(?<![A-Za-z0-9]){re.escape(raw)}(?![A-Za-z0-9])", pseudo, out)
    return out


def pseudonymize_records(records: Sequence[Mapping[str, Any]], key: str | bytes) -> list[dict[str, Any]]:
    """Copies of ``records`` with ``patient_id`` replaced by its keyed pseudonym (:func:`pseudonymize_id`) and, in the
    free text (``reasons``, ``error``), the raw ids replaced and the folders of file paths removed."""
    mapping = {str(r.get("patient_id")): pseudonymize_id(r.get("patient_id"), key) for r in records}
    out = []
    for rec in records:
        r = dict(rec)
        r["patient_id"] = mapping[str(rec.get("patient_id"))]
        if r.get("reasons"):
            r["reasons"] = {m: pseudonymize_text(v, mapping) for m, v in r["reasons"].items()}
        r["error"] = pseudonymize_text(r.get("error"), mapping)
        out.append(r)
    return out
