"""A cohort's plan: every generic training choice, made from the cohort's fingerprint, with the reason for it.

As nnU-Net plans from a dataset fingerprint, the cohort bundle ships rules, not numbers tuned on one cohort:

- :func:`fingerprint` ``(spec, datalist) -> dict``: modality kinds and sizes, patients per split, per class and split,
  and per observed-modality subset;
- :func:`make_plan` ``(fingerprint, overrides) -> Plan``: the choices by the rules below, each with its reason, then the
  cohort file's ``plan:`` block (``overrides``, e.g. ``plan: {backbone_3d: none, logit_fusion: product}``) on top;
- the prepare stage writes the plan as ``plan.json`` beside ``clinical_stats.json`` (:func:`write_plan`) and every
  stage reads it with :func:`load_plan` (computed on the fly from the datalist when there is none, said in the log).
  A bundle stage's own key that reads the plan (``max_epochs: "$@plan.max_epochs"``) still yields to the command line.

The rules (the generic defaults; ``C`` classes, ``n`` training patients):

- ``backbone_2d`` / ``backbone_3d``: ``small``, the project's small CNN (``channels_2d`` / ``channels_3d`` =
  16-32-64, stride 2 each, ``strides_3d`` null), its last feature map max-pooled (``pool_mode`` max) to
  ``pool_2d`` / ``pool_3d`` = 2 per side; no histogram token (``histogram_bins_3d`` null, ``histogram_shells_3d`` 1);
- ``logit_fusion``: ``transformer`` (the method's fused classifier);
- ``batch_size``: 16 from 300 training patients, 8 from 100, else 4 (8 when the count is unknown);
- ``max_epochs`` 60, ``lr_schedule`` cosine, ``checkpoint`` best, ``checkpoint_metric`` balanced_accuracy;
- ``class_weighting``: ``balanced`` when the smallest class holds under ``0.8 / C`` of the training patients (or the
  counts are unknown), else ``none`` (every weight would be within 0.8-1.25 of 1);
- ``unimodal_weight``: 3 with two or more modalities, 0 with one (its only subset is the modality alone);
- ``folds``: 1 (one training on the datalist's split; K > 1: cross-validation, docs/ensembles.md);
- ``self_supervised``: false (random starting weights; true after the ``pretrain`` stage);
- ``image_size``: a record of each image modality's ``spatial_size`` (set in the cohort file's modality entry).

:func:`imbalance_warnings` names every class under ``min(20 %, 0.8 / C)`` of the training split.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_dymo.errors import DyMoInputError

if TYPE_CHECKING:
    import torch

    from monai_dymo.cohort.spec import CohortSpec

__all__ = [
    "PLAN_FILENAME",
    "CHOICES",
    "NETWORK_CHOICES",
    "Plan",
    "fingerprint",
    "make_plan",
    "check_overrides",
    "write_plan",
    "load_plan",
    "imbalance_warnings",
    "training_class_weights",
]

logger = logging.getLogger("monai_dymo.cohort")

#: file name of the plan (written by the prepare stage into its model folder, beside the clinical statistics)
PLAN_FILENAME = "plan.json"
#: the plan's choices that configure the fusion network (``Plan.network``, for ``build_cohort_fusion``)
NETWORK_CHOICES: tuple[str, ...] = (
    "backbone_2d", "channels_2d", "pool_2d", "backbone_3d", "channels_3d", "strides_3d", "pool_3d", "pool_mode",
    "histogram_bins_3d", "histogram_shells_3d", "logit_fusion",
)
#: every choice of the plan, in the order of its table
CHOICES: tuple[str, ...] = (
    "image_size", *NETWORK_CHOICES, "batch_size", "max_epochs", "lr_schedule", "checkpoint", "checkpoint_metric",
    "class_weighting", "unimodal_weight", "folds", "self_supervised",
)
_RECORDS = ("image_size",)  # set elsewhere in the cohort file, recorded in the plan
#: the rule's batch sizes: (at least this many training patients, batch size), largest first; else the last
_BATCH_SIZES = ((300, 16), (100, 8), (0, 4))
#: class_weighting is balanced when the smallest class holds under this fraction of an even share (1 / C)
_BALANCE_FRACTION = 0.8
#: a class under this share of the training split (and under _BALANCE_FRACTION / C) is named by a warning
_WARN_SHARE = 0.2


@dataclass(frozen=True)
class Plan:
    """The generic choices of one cohort (the module docstring gives the rules).

    Attributes:
        image_size: image modality name -> its ``spatial_size`` (a record of the cohort file).
        backbone_2d, channels_2d, pool_2d, backbone_3d, channels_3d, strides_3d, pool_3d, pool_mode,
            histogram_bins_3d, histogram_shells_3d, logit_fusion: the fusion network's encoders and decision
            (:class:`~monai_dymo.cohort.networks.FusionSettings`).
        batch_size, max_epochs, lr_schedule, checkpoint, checkpoint_metric, class_weighting, unimodal_weight: the
            fusion training (the train stage's keys of the same names).
        folds: training folds (1: the datalist's own split).
        self_supervised: the train stage starts the image encoders from the pretrain stage's self-supervised
            backbones (:mod:`~monai_dymo.cohort.pretraining`).
        reasons: choice -> why (the rule with the fingerprint's figures, or the cohort file).
        overrides: the cohort file's ``plan`` block the choices include.
        fingerprint: what the rules read (:func:`fingerprint`).
    """

    image_size: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    backbone_2d: str = "small"
    channels_2d: tuple[int, ...] = (16, 32, 64)
    pool_2d: int = 2
    backbone_3d: str = "small"
    channels_3d: tuple[int, ...] = (16, 32, 64)
    strides_3d: tuple[int, ...] | None = None
    pool_3d: int = 2
    pool_mode: str = "max"
    histogram_bins_3d: int | None = None
    histogram_shells_3d: int = 1
    logit_fusion: str = "transformer"
    batch_size: int = 8
    max_epochs: int = 60
    lr_schedule: str = "cosine"
    checkpoint: str = "best"
    checkpoint_metric: str = "balanced_accuracy"
    class_weighting: str = "balanced"
    unimodal_weight: float = 3.0
    folds: int = 1
    self_supervised: bool = False
    reasons: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: Mapping[str, Any] = field(default_factory=dict)

    def training_class_counts(self, classes: Sequence[str]) -> list[int] | None:
        """Patients per class of the training split, in ``classes`` order (None when the fingerprint has no counts)."""
        counts = (self.fingerprint.get("class_counts") or {}).get("training")
        return None if not counts else [int(counts.get(c, 0)) for c in classes]

    @property
    def network(self) -> dict[str, Any]:
        """The fusion network's settings (``build_cohort_fusion(spec, stats, settings=plan.network)``)."""
        return {k: getattr(self, k) for k in NETWORK_CHOICES}

    @property
    def choices(self) -> dict[str, Any]:
        """Every choice, JSON-ready (lists for tuples)."""
        return {k: _plain(getattr(self, k)) for k in CHOICES}

    def to_json(self) -> str:
        """``{"cohort", "choices", "reasons" (one per choice), "overrides", "fingerprint"}`` as indented JSON."""
        doc = {"cohort": self.fingerprint.get("cohort"), "choices": self.choices,
               "reasons": {k: self.reasons.get(k, "") for k in CHOICES}, "overrides": _plain(dict(self.overrides)),
               "fingerprint": _plain(dict(self.fingerprint))}
        return json.dumps(doc, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        """The plan of :meth:`to_json` (``ValueError`` naming ``source`` when it is not one)."""
        try:
            doc = json.loads(text)
            choices = dict(doc["choices"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DyMoInputError(f"{source} is not a plan written by the prepare stage ({type(e).__name__}: "
                                 f"{e}).") from e
        unknown = sorted(set(choices) - set(CHOICES))
        if unknown:
            raise DyMoInputError(f"{source}: unknown choice(s) {unknown}; rerun the prepare stage to write the plan "
                                 "again.")
        options = _options()
        values = {k: _image_size(v) if k == "image_size" else _check_value(k, v, options, source)
                  for k, v in choices.items()}
        return cls(**values, reasons=dict(doc.get("reasons") or {}), overrides=dict(doc.get("overrides") or {}),
                   fingerprint=dict(doc.get("fingerprint") or {}))

    def table(self) -> list[str]:
        """One line per choice: name, value, reason (aligned)."""
        values = {k: _show(getattr(self, k)) for k in CHOICES}
        width_k = max(len(k) for k in CHOICES)
        width_v = min(max(len(v) for v in values.values()), 28)
        return [f"{k:<{width_k}}  {values[k]:<{width_v}}  {self.reasons.get(k, '')}" for k in CHOICES]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _image_size(value: Any) -> dict[str, tuple[int, ...]]:
    """The ``image_size`` record read from JSON (tuples for sizes)."""
    return {str(k): tuple(int(s) for s in v) for k, v in dict(value or {}).items()}


def _show(value: Any) -> str:
    if isinstance(value, Mapping):  # image_size: modality -> size
        return ", ".join(f"{k} {'x'.join(str(s) for s in v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return "null" if value is None else str(value)


# ---------------------------------------------------------------------------------------------------- fingerprint
def _observed(spec: CohortSpec, entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The modalities observed for one datalist entry of :func:`~monai_dymo.cohort.load_split`: given, and without a
    recorded reason (e.g. the prepare stage's file checks); a clinical group with at least one field filled."""
    from monai_dymo.keys import DyMoKeys
    from monai_dymo.transforms.clinical import ClinicalFieldStats

    reasons = entry.get(DyMoKeys.REASONS) or {}
    out = []
    for m in spec.modalities:
        if m.name in reasons:
            continue
        if m.is_image:
            if entry.get(m.name) is not None:
                out.append(m.name)
        elif not all(ClinicalFieldStats(sentinels=m.sentinels).is_missing(entry.get(f)) for f in m.fields):
            out.append(m.name)
    return tuple(out)


def fingerprint(spec: CohortSpec, datalist: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> dict[str, Any]:
    """What the plan's rules read, JSON-ready.

    Args:
        spec: the cohort.
        datalist: ``{split: entries}`` as :func:`~monai_dymo.cohort.load_split` gives them (a modality with a reason
            under ``reasons`` counts as missing); None: the spec alone (no counts).

    Returns:
        ``{"cohort", "classes", "modalities": [{"name", "kind", "spatial_size", "channels"} | {"name", "kind",
        "fields"}], "patients": {split: n}, "class_counts": {split: {class: n}} (labelled splits),
        "observed_subsets": {split: {"t1+flair": n, ..., "(none)": n}}}``.
    """
    from monai_dymo.keys import DyMoKeys

    modalities = [
        {"name": m.name, "kind": m.kind, "spatial_size": list(m.spatial_size), "channels": m.channels}
        if m.is_image else {"name": m.name, "kind": m.kind, "fields": len(m.fields)}
        for m in spec.modalities
    ]
    out: dict[str, Any] = {"cohort": spec.name, "classes": list(spec.classes), "modalities": modalities,
                           "patients": {}, "class_counts": {}, "observed_subsets": {}}
    for split, entries in (datalist or {}).items():
        out["patients"][split] = len(entries)
        labels = [e.get(DyMoKeys.LABEL) for e in entries]
        if entries and all(label is not None for label in labels):
            counts = Counter(int(label) for label in labels)
            out["class_counts"][split] = {c: counts.get(i, 0) for i, c in enumerate(spec.classes)}
        subsets = Counter("+".join(_observed(spec, e)) or "(none)" for e in entries)
        out["observed_subsets"][split] = dict(sorted(subsets.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def _read_fingerprint(spec: CohortSpec) -> dict[str, Any]:
    """The fingerprint of the cohort's datalist (paths not checked); of the spec alone when it cannot be read."""
    from monai_dymo.cohort.datalist import load_split, read_clinical_table, read_datalist

    try:
        table = read_clinical_table(spec)
        splits = {s: load_split(spec, s, clinical=table) for s in read_datalist(spec)}
    except (FileNotFoundError, ValueError) as e:
        reason = " ".join(str(e).split())
        logger.info("plan: the datalist was not read (%s); choices from the cohort file alone", reason)
        return fingerprint(spec)
    return fingerprint(spec, splits)


# ---------------------------------------------------------------------------------------------------- rules
def _rules(fp: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The generic choices for ``fp`` and the reason for each (the module docstring's rules)."""
    mods = list(fp.get("modalities") or [])
    classes = list(fp.get("classes") or [])
    n_train = (fp.get("patients") or {}).get("training")
    counts = (fp.get("class_counts") or {}).get("training")
    c, r = {}, {}
    c["image_size"] = {m["name"]: tuple(m["spatial_size"]) for m in mods if m["kind"] != "clinical"}
    r["image_size"] = "the cohort file's spatial_size of each image modality (set it there)"
    for kind, dims in (("image2d", "2d"), ("image3d", "3d")):
        of_kind = [m for m in mods if m["kind"] == kind]
        c[f"backbone_{dims}"], c[f"channels_{dims}"], c[f"pool_{dims}"] = "small", (16, 32, 64), 2
        if not of_kind:
            for k in (f"backbone_{dims}", f"channels_{dims}", f"pool_{dims}"):
                r[k] = f"no {kind} modality: unused"
            continue
        sizes = ", ".join(f"{m['name']} {'x'.join(str(s) for s in m['spatial_size'])}" for m in of_kind)
        r[f"backbone_{dims}"] = (f"{kind} ({sizes}): the small CNN, trained from scratch (nothing to download); a "
                                 "MONAI backbone (resnet10 ...) with the site's pretrained weights is the alternative")
        r[f"channels_{dims}"] = "three stride-2 stages of the small CNN"
        r[f"pool_{dims}"] = f"tokens: the last feature map pooled to 2 per side ({2 ** int(dims[0])} per modality)"
    c["strides_3d"], r["strides_3d"] = None, "stride 2 at every stage"
    c["pool_mode"], r["pool_mode"] = "max", "max-pooled: a small lesion anywhere in the image reaches a token"
    c["histogram_bins_3d"], r["histogram_bins_3d"] = None, ("no intensity-histogram token (for z-scored, "
                                                            "lesion-centred regions: a cohort roi)")
    c["histogram_shells_3d"], r["histogram_shells_3d"] = 1, "one histogram over the whole region (when on)"
    c["logit_fusion"], r["logit_fusion"] = "transformer", ("the method's fused classifier over the observed modalities "
                                                           "together; product (naive Bayes over modalities) suits "
                                                           "modalities that say independent things")
    if n_train is None:
        c["batch_size"], r["batch_size"] = 8, "training patients unknown (datalist not read): 8"
    else:
        c["batch_size"] = next(b for least, b in _BATCH_SIZES if n_train >= least)
        r["batch_size"] = f"{n_train} training patients: 16 from 300, 8 from 100, else 4"
    c["max_epochs"], r["max_epochs"] = 60, "the length of the cosine schedule; the best epoch is kept"
    c["lr_schedule"], r["lr_schedule"] = "cosine", "the learning rate annealed to 0 over max_epochs"
    c["checkpoint"], r["checkpoint"] = "best", ("the validation epoch best by checkpoint_metric, with early stopping: "
                                                "no epoch count to tune")
    c["checkpoint_metric"], r["checkpoint_metric"] = "balanced_accuracy", (
        "mean recall over classes: a rare class never predicted costs the epoch (accuracy rewards the common class)")
    limit = _BALANCE_FRACTION / max(len(classes), 1)
    total = sum(counts.values()) if counts else 0
    if not total:
        c["class_weighting"], r["class_weighting"] = "balanced", "training class counts unknown: balanced"
    else:
        name, smallest = min(counts.items(), key=lambda kv: kv[1])
        share = smallest / total
        if share < limit:
            c["class_weighting"] = "balanced"
            r["class_weighting"] = (f"smallest class {name!r}: {smallest} of {total} training patients ({share:.0%}), "
                                    f"under 0.8/C = {limit:.0%}: weights n / (C n_c)")
        else:
            c["class_weighting"] = "none"
            r["class_weighting"] = (f"every class holds at least 0.8/C = {limit:.0%} of the {total} training patients "
                                    f"(smallest {name!r}: {share:.0%}): weights would be near 1")
    many = len(mods) >= 2
    c["unimodal_weight"] = 3.0 if many else 0.0
    r["unimodal_weight"] = ("every observed modality also fused alone (weight 3), so no encoder leaves the work to an "
                            "easier modality" if many else "one modality: its only subset is the modality alone")
    c["folds"], r["folds"] = 1, "one training on the datalist's training / validation split"
    c["self_supervised"], r["self_supervised"] = False, (
        "image encoders start from random weights; true: from the pretrain stage's contrastive backbones (training "
        "and unlabelled images; measured on derm7pt and BUS-BRA, docs/experiments/real_cohorts.md)")
    return c, r


def _options() -> dict[str, tuple]:
    from monai_dymo.engines.schedules import CHECKPOINT_METRICS, CHECKPOINTS, LR_SCHEDULES
    from monai_dymo.losses import CLASS_WEIGHTINGS
    from monai_dymo.networks.backbones import BACKBONES
    from monai_dymo.networks.fusion import LOGIT_FUSIONS

    return {"backbone_2d": BACKBONES, "backbone_3d": BACKBONES, "pool_mode": ("max", "avg", "shells"),
            "logit_fusion": LOGIT_FUSIONS, "lr_schedule": LR_SCHEDULES, "checkpoint": CHECKPOINTS,
            "checkpoint_metric": CHECKPOINT_METRICS, "class_weighting": CLASS_WEIGHTINGS}


def _check_value(key: str, value: Any, options: Mapping[str, tuple], source: str = "cohort plan") -> Any:
    """One choice's value as the Plan holds it; ``ValueError`` naming ``source`` and ``key`` when it is wrong."""
    where = f"{source}: {key}"
    if key in options:
        if value not in options[key]:
            raise DyMoInputError(f"{where} must be one of {list(options[key])}, got {value!r}.")
        return value
    if key in ("channels_2d", "channels_3d", "strides_3d"):
        if value is None and key == "strides_3d":
            return None
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise DyMoInputError(f"{where} must be a list of positive integers, got {value!r}.")
        return tuple(value)
    if key == "histogram_bins_3d" and value is None:
        return None
    if key in ("batch_size", "max_epochs", "pool_2d", "pool_3d", "histogram_bins_3d", "histogram_shells_3d", "folds"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            or_null = " or null" if key == "histogram_bins_3d" else ""
            raise DyMoInputError(f"{where} must be a positive integer{or_null}, got {value!r}.")
        return value
    if key == "self_supervised":
        if not isinstance(value, bool):
            raise DyMoInputError(f"{where} must be true or false, got {value!r}.")
        return value
    if key == "unimodal_weight":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise DyMoInputError(f"{where} must be a number >= 0, got {value!r}.")
        return float(value)
    raise ValueError(f"{where}: no check for this choice.")


def check_overrides(overrides: Any) -> dict[str, Any]:
    """The cohort file's ``plan`` block, checked: ``ValueError`` naming an unknown key or a wrong value."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise DyMoInputError(f"cohort plan: must be a mapping of choices, e.g. {{batch_size: 8}}, got {overrides!r}.")
    if not overrides:
        return {}
    known = [k for k in CHOICES if k not in _RECORDS]
    unknown = sorted(str(k) for k in overrides if k not in CHOICES)
    if unknown:
        raise DyMoInputError(f"cohort plan: unknown key(s) {unknown}; known keys are {known}.")
    records = sorted(str(k) for k in overrides if k in _RECORDS)
    if records:
        raise DyMoInputError(f"cohort plan: {records[0]} is set by the cohort file elsewhere (each modality's "
                             "spatial_size), not in the plan.")
    options = _options()
    return {str(k): _check_value(str(k), v, options) for k, v in overrides.items()}


def make_plan(fp: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Plan:
    """The plan of a cohort fingerprint (:func:`fingerprint`): the rules' choices with their reasons, then
    ``overrides`` (the cohort file's ``plan`` block; checked, ``ValueError`` naming a wrong key) on top."""
    choices, reasons = _rules(fp)
    given = check_overrides(overrides)
    for k, v in given.items():
        reasons[k] = f"cohort file (plan: {k}); the rule gives {_show(choices[k])}"
        choices[k] = v
    return Plan(**choices, reasons=reasons, overrides=given, fingerprint=dict(fp))


# ---------------------------------------------------------------------------------------------------- files
def write_plan(plan: Plan, path: str | Path) -> str:
    """Write ``plan`` as JSON (:meth:`Plan.to_json`) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(plan.to_json() + "\n")
    return str(path)


def _same_cohort(fp: Mapping[str, Any], spec: CohortSpec) -> bool:
    now = fingerprint(spec)
    return fp.get("classes") == now["classes"] and fp.get("modalities") == now["modalities"]


def load_plan(spec: CohortSpec, model_dir: str | Path, *fallback_dirs: str | Path) -> Plan:
    """The plan the stages use: ``<model_dir>/plan.json`` (else the first of ``fallback_dirs`` holding one, e.g. the
    cohort's default model folder), as the prepare stage wrote it.

    The cohort file's ``plan`` block wins: when it differs from the one the file was made with, the plan is made
    again from the file's fingerprint with the current block; when the file was made for other modalities or classes,
    or there is no file, the plan is computed on the fly from the datalist (said in the log).
    """
    current = check_overrides(dict(spec.plan_overrides))
    for folder in (model_dir, *fallback_dirs):
        path = Path(folder) / PLAN_FILENAME
        if not path.is_file():
            continue
        stored = Plan.from_json(path.read_text(), source=str(path))
        if not _same_cohort(stored.fingerprint, spec):
            logger.info("plan: %s was made for other modalities or classes; computed on the fly from the datalist "
                        "(rerun the prepare stage to write it)", path)
            break
        if _plain(dict(stored.overrides)) != _plain(current):
            logger.info("plan: %s with the cohort file's plan block as it is now (rerun the prepare stage to record "
                        "it)", path)
            return make_plan(stored.fingerprint, current)
        logger.info("plan: %s", path)
        return stored
    else:
        logger.info("plan: no %s in %s; computed on the fly from the datalist (the prepare stage writes it)",
                    PLAN_FILENAME, model_dir)
    return make_plan(_read_fingerprint(spec), current)


# ---------------------------------------------------------------------------------------------------- classes
def imbalance_warnings(fp: Mapping[str, Any], class_weighting: str) -> list[str]:
    """One line per class under ``min(20 %, 0.8 / C)`` of the training split: its count and share, and whether class
    weighting is on (``balanced``, with the class's weight) or off."""
    counts = (fp.get("class_counts") or {}).get("training") or {}
    total = sum(counts.values())
    if not total:
        return []
    present = sum(1 for n in counts.values() if n > 0)
    limit = min(_WARN_SHARE, _BALANCE_FRACTION / len(counts))
    lines = []
    for name, n in counts.items():
        share = n / total
        if share >= limit:
            continue
        if class_weighting == "balanced" and n > 0:
            weighting = f"class weighting is on (balanced: its rows weigh {total / (present * n):.2f})"
        elif class_weighting == "balanced":
            weighting = "class weighting cannot help: the class has no training patient"
        else:
            weighting = ("class weighting is off (class_weighting none): the model may never predict it; "
                         "class_weighting balanced weighs it up")
        lines.append(f"class {name!r} has {n} of {total} training patients ({100 * share:.1f} %), under "
                     f"{100 * limit:.0f} %: {weighting}")
    return lines


def training_class_weights(
    spec: CohortSpec, class_weighting: str, max_patients: int | None = None
) -> torch.Tensor | None:
    """Per-class weights ``[C]`` of the training loss from the training split's labels (its first ``max_patients``
    entries, as the training dataset takes them): :func:`monai_dymo.losses.class_weights`; logged."""
    from monai_dymo.cohort.datalist import load_split
    from monai_dymo.keys import DyMoKeys
    from monai_dymo.losses import class_weights

    entries = load_split(spec, "training", clinical=False)
    if max_patients is not None:
        entries = entries[: int(max_patients)]
    counts = Counter(int(e[DyMoKeys.LABEL]) for e in entries)
    n_c = [counts.get(i, 0) for i in range(spec.num_classes)]
    weights = class_weights(n_c, class_weighting)
    if weights is None:
        logger.info("class weighting none: every training row weighs 1 (classes: %s)",
                    ", ".join(f"{c} {n}" for c, n in zip(spec.classes, n_c)))
    else:
        logger.info("class weighting balanced: %s", ", ".join(
            f"{c} {float(w):.3f} ({n} patients)" for c, w, n in zip(spec.classes, weights, n_c)))
    return weights
