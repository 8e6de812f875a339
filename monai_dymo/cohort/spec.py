"""A user's cohort, described as data: modalities, datalist, clinical table, classes.

The cohort bundle (``bundles/cohort_dymo``) reads one short YAML mapping under the key ``cohort``::

    cohort:
      name: my_cohort
      datalist: /data/cohort/datalist.json     # MONAI datalist: training / validation / testing lists
      data_root: /data/cohort                  # relative image paths resolve here (default: the datalist's folder)
      clinical_csv: /data/cohort/clinical.csv  # optional; joined to the datalist by patient id
      patient_id: patient_id                   # id key of the datalist entries and id column of the CSV
      label: label                             # label key of the datalist entries (class index or class name)
      classes: [glioma, metastasis, meningioma]
      modalities:
        - {name: t1, kind: image3d, spatial_size: [64, 64, 64]}
        - {name: flair, kind: image3d, spatial_size: [64, 64, 64], pixdim: [3, 3, 3]}
        - {name: xray, kind: image2d, spatial_size: [128, 128]}
        - {name: photo, kind: image2d, spatial_size: [128, 128], channels: 3}   # RGB kept
        - {name: clinical, kind: clinical, continuous: [age, kps], categorical: [sex], sentinels: [-999]}
      roi: {guide: [flair]}   # optional: crop the co-registered volumes around the lesion found in FLAIR
      plan: {batch_size: 8}   # optional: override any generic choice of the cohort's plan (monai_dymo.cohort.plan)

With ``roi`` the ``image3d`` modalities (each with ``pixdim``, one ``spatial_size``) are resampled to ``pixdim`` and
cropped to ``spatial_size`` around the brightest region of the first observed ``guide`` sequence (the lesion and its
oedema in FLAIR): the centroid of the largest connected region brighter than ``fraction`` (default 0.7) times the peak
of the smoothed guide (``fraction: null``: the peak itself), the same world point for every sequence of a patient;
without an observed guide, around the centre of the brain (:class:`~monai_dymo.transforms.GuidedROICropd`; ``sigma`` /
``margin`` in voxels, defaults 2 and 1).

:class:`CohortSpec` validates it with errors that name the offending key, and every bundle stage derives what it needs
from it (transforms, network sizes, clinical encodings), so the user never writes Python or arithmetic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_dymo.errors import DyMoInputError

__all__ = ["MODALITY_KINDS", "ModalityEntry", "ROISpec", "CohortSpec"]

MODALITY_KINDS = ("image2d", "image3d", "clinical")
"""Kinds of modality a cohort may declare."""

_INTENSITY = ("zscore", "minmax", "none")
_SPLITS = ("training", "validation", "testing")


def _ints(value: Any, what: str, n: int | None = None) -> tuple[int, ...]:
    if isinstance(value, int):
        value = [value] * (n or 1)
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError) as e:
        raise DyMoInputError(f"{what} must be a list of integers, got {value!r}.") from e
    if n is not None and len(out) != n:
        raise DyMoInputError(f"{what} must have {n} values, got {list(out)}.")
    if any(v < 1 for v in out):
        raise DyMoInputError(f"{what} must be positive, got {list(out)}.")
    return out


@dataclass(frozen=True)
class ModalityEntry:
    """One declared modality.

    Attributes:
        name: modality name (datalist key for images; group name for clinical fields).
        kind: ``"image2d"``, ``"image3d"`` or ``"clinical"``.
        spatial_size: images: target spatial shape after preprocessing.
        pixdim: 3D images: optional target spacing in mm (then: orientation RAS, spacing, centred pad/crop to
            ``spatial_size``); without it the volume is resized to ``spatial_size``.
        reader: optional MONAI reader name for files (e.g. ``"NibabelReader"``, ``"PILReader"``); default: by suffix.
        intensity: ``"zscore"`` (3D default: over non-zero voxels), ``"minmax"`` (2D default: to [0, 1]) or ``"none"``.
        continuous, categorical: clinical: the CSV columns of the group.
        sentinels: clinical: values that mean "missing" besides blanks (e.g. ``-999``).
        pretrained: images: optional path of pretrained weights for this modality's encoder backbone (e.g. a
            MedicalNet 3D ResNet or an ImageNet 2D ResNet the site already has; nothing is downloaded).
        channels: images: channels after preprocessing. ``image2d``: 1 (default: RGB / RGBA to grayscale) or 3 (RGB
            kept; grayscale pictures repeated, alpha dropped); ``image3d``: 1.
    """

    name: str
    kind: str
    spatial_size: tuple[int, ...] = ()
    pixdim: tuple[float, ...] | None = None
    reader: str | None = None
    intensity: str = "zscore"
    continuous: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    sentinels: tuple[Any, ...] = ()
    pretrained: str | None = None
    channels: int = 1

    @property
    def is_image(self) -> bool:
        return self.kind != "clinical"

    @property
    def spatial_dims(self) -> int:
        return 2 if self.kind == "image2d" else 3

    @property
    def fields(self) -> tuple[str, ...]:
        """Clinical fields of the group (continuous first, as encoded)."""
        return (*self.continuous, *self.categorical)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], index: int) -> ModalityEntry:
        where = f"cohort.modalities[{index}]"
        if not isinstance(cfg, Mapping):
            raise DyMoInputError(f"{where} must be a mapping with at least 'name' and 'kind', got {cfg!r}.")
        known = {"name", "kind", "spatial_size", "pixdim", "reader", "intensity", "continuous", "categorical",
                 "sentinels", "pretrained", "channels"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DyMoInputError(f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}.")
        name = str(cfg.get("name") or "").strip()
        if not name or "," in name:
            raise DyMoInputError(f"{where}: 'name' must be a non-empty name without commas, got {cfg.get('name')!r}.")
        kind = str(cfg.get("kind", "")).lower()
        if kind not in MODALITY_KINDS:
            raise DyMoInputError(
                f"{where} ({name!r}): unknown modality kind {cfg.get('kind')!r}; use one of {list(MODALITY_KINDS)}."
            )
        where = f"{where} ({name!r})"
        if kind == "clinical":
            cont = tuple(str(f) for f in cfg.get("continuous") or ())
            cat = tuple(str(f) for f in cfg.get("categorical") or ())
            if not cont and not cat:
                raise DyMoInputError(f"{where}: a clinical modality needs 'continuous' and/or 'categorical' fields.")
            dup = sorted({f for f in (*cont, *cat) if (*cont, *cat).count(f) > 1})
            if dup:
                raise DyMoInputError(f"{where}: field(s) {dup} listed twice.")
            if "channels" in cfg:
                raise DyMoInputError(f"{where}: 'channels' is for image modalities.")
            return cls(name, kind, continuous=cont, categorical=cat, sentinels=tuple(cfg.get("sentinels") or ()))
        dims = 2 if kind == "image2d" else 3
        if "spatial_size" not in cfg:
            raise DyMoInputError(f"{where}: images need a 'spatial_size' ({dims} integers).")
        size = _ints(cfg["spatial_size"], f"{where} spatial_size", dims)
        pixdim = cfg.get("pixdim")
        if pixdim is not None:
            if kind == "image2d":
                raise DyMoInputError(f"{where}: 'pixdim' is for 3D images; 2D images are resized to spatial_size.")
            pixdim = tuple(float(v) for v in (pixdim if isinstance(pixdim, Sequence) else [pixdim] * 3))
            if len(pixdim) != 3 or any(v <= 0 for v in pixdim):
                raise DyMoInputError(f"{where}: 'pixdim' must be 3 positive spacings in mm, got {cfg.get('pixdim')!r}.")
        intensity = str(cfg.get("intensity") or ("minmax" if kind == "image2d" else "zscore")).lower()
        if intensity not in _INTENSITY:
            raise DyMoInputError(f"{where}: 'intensity' must be one of {list(_INTENSITY)}, got "
                                 f"{cfg.get('intensity')!r}.")
        reader = cfg.get("reader")
        pretrained = cfg.get("pretrained")
        channels = cfg.get("channels", 1)
        allowed = (1, 3) if kind == "image2d" else (1,)
        if isinstance(channels, bool) or channels not in allowed:
            raise DyMoInputError(
                f"{where}: 'channels' must be one of {list(allowed)} for {kind} modalities, got {cfg.get('channels')!r}"
                + (" (3: RGB kept, 1: grayscale)." if kind == "image2d" else ".")
            )
        return cls(name, kind, spatial_size=size, pixdim=pixdim, reader=None if reader is None else str(reader),
                   intensity=intensity, channels=int(channels),
                   pretrained=None if pretrained in (None, "") else str(pretrained))


@dataclass(frozen=True)
class ROISpec:
    """Where the ``image3d`` volumes are cropped: around the brightest region of the first observed guide sequence.

    Attributes:
        guide: ``image3d`` modality names, by preference (e.g. ``("flair",)``).
        sigma: Gaussian smoothing of the guide, in voxels.
        margin: voxels eroded from the guide's foreground before the argmax (the bright rim of the brain).
        fraction: a number in (0, 1): the crop is centred on the centroid of the largest connected region brighter
            than ``fraction`` times the peak of the smoothed guide; None: on the peak (the argmax).
    """

    guide: tuple[str, ...]
    sigma: float = 2.0
    margin: int = 1
    fraction: float | None = 0.7

    @classmethod
    def from_config(cls, cfg: Any, modalities: Sequence[ModalityEntry]) -> ROISpec:
        """Validate ``cohort.roi`` against the declared modalities.

        Raises:
            ValueError: naming the key that is wrong.
        """
        if not isinstance(cfg, Mapping):
            raise DyMoInputError(f"cohort roi: must be a mapping like {{guide: [flair]}}, got {cfg!r}.")
        unknown = sorted(set(cfg) - {"guide", "sigma", "margin", "fraction"})
        if unknown:
            raise DyMoInputError(f"cohort roi: unknown key(s) {unknown}; known keys are ['fraction', 'guide', "
                                 "'margin', 'sigma'].")
        guide = cfg.get("guide")
        guide = (guide,) if isinstance(guide, str) else tuple(str(g) for g in (guide or ()))
        volumes = [m for m in modalities if m.kind == "image3d"]
        names = [m.name for m in volumes]
        if not guide or any(g not in names for g in guide):
            raise DyMoInputError(f"cohort roi: 'guide' must list image3d modalities (of {names}), got {list(guide)}.")
        no_pixdim = [m.name for m in volumes if m.pixdim is None]
        if no_pixdim:
            raise DyMoInputError(f"cohort roi: the cropped volumes need a 'pixdim' (the resolution the lesion needs); "
                                 f"{no_pixdim} have none.")
        sizes = {m.spatial_size for m in volumes}
        if len(sizes) > 1:
            raise DyMoInputError(f"cohort roi: the cropped volumes share one region, so one 'spatial_size'; got "
                                 f"{ {m.name: list(m.spatial_size) for m in volumes} }.")
        try:
            sigma, margin = float(cfg.get("sigma", 2.0)), int(cfg.get("margin", 1))
        except (TypeError, ValueError) as e:
            raise DyMoInputError(f"cohort roi: 'sigma' and 'margin' must be numbers of voxels ({e}).") from e
        if sigma < 0 or margin < 0:
            raise DyMoInputError(f"cohort roi: 'sigma' and 'margin' must be >= 0, got {sigma}, {margin}.")
        fraction = cfg.get("fraction", 0.7)
        if fraction is not None:
            try:
                fraction = float(fraction)
            except (TypeError, ValueError) as e:
                raise DyMoInputError("cohort roi: 'fraction' must be a number in (0, 1) or null, got "
                                     f"{fraction!r}.") from e
            if not 0.0 < fraction < 1.0:
                raise DyMoInputError(f"cohort roi: 'fraction' must be in (0, 1) or null, got {fraction}.")
        return cls(guide=guide, sigma=sigma, margin=margin, fraction=fraction)


@dataclass(frozen=True)
class CohortSpec:
    """A validated cohort description (see the module docstring for the YAML form).

    Attributes:
        name: cohort name (used in output folder names).
        datalist: path of the MONAI datalist JSON.
        data_root: folder that relative image paths in the datalist are resolved against.
        clinical_csv: optional path of the clinical table.
        patient_id: id key / column.
        label: label key of the datalist entries.
        classes: class names; labels are class indices into it or the names themselves.
        modalities: the declared modalities, in the order of the networks' modality columns.
        roi: optional lesion-centred crop of the ``image3d`` volumes (:class:`ROISpec`).
        plan_overrides: the cohort file's ``plan`` block: choices that replace the plan's rules
            (:func:`~monai_dymo.cohort.plan.make_plan`), checked against the plan's keys.
    """

    name: str
    datalist: Path
    data_root: Path
    clinical_csv: Path | None
    patient_id: str
    label: str
    classes: tuple[str, ...]
    modalities: tuple[ModalityEntry, ...] = field(default_factory=tuple)
    roi: ROISpec | None = None
    plan_overrides: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> CohortSpec:
        """Validate the ``cohort`` mapping; relative paths resolve against ``base_dir`` (default: the current folder).

        Raises:
            ValueError: naming the key that is missing or wrong.
        """
        if not isinstance(cfg, Mapping):
            raise DyMoInputError("the cohort description must be a mapping under the key 'cohort', got "
                                 f"{type(cfg).__name__}.")
        known = {"name", "datalist", "data_root", "clinical_csv", "patient_id", "label", "classes", "modalities", "roi",
                 "plan"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DyMoInputError(f"cohort: unknown key(s) {unknown}; known keys are {sorted(known)}.")
        for key in ("datalist", "classes", "modalities"):
            if not cfg.get(key):
                raise DyMoInputError(f"cohort: '{key}' is required.")
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        def path(value: Any) -> Path:
            p = Path(str(value)).expanduser()
            return p if p.is_absolute() else (base / p)

        datalist = path(cfg["datalist"])
        data_root = path(cfg["data_root"]) if cfg.get("data_root") else datalist.parent
        clinical_csv = path(cfg["clinical_csv"]) if cfg.get("clinical_csv") else None
        classes = tuple(str(c) for c in cfg["classes"])
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise DyMoInputError(f"cohort: 'classes' must list at least two distinct class names, got {list(classes)}.")
        mods_cfg = cfg["modalities"]
        if not isinstance(mods_cfg, Sequence) or isinstance(mods_cfg, (str, bytes)):
            raise DyMoInputError("cohort: 'modalities' must be a list of {name, kind, ...} mappings.")
        modalities = tuple(ModalityEntry.from_config(m, i) for i, m in enumerate(mods_cfg))
        names = [m.name for m in modalities]
        if len(set(names)) != len(names):
            raise DyMoInputError(f"cohort: modality names must be distinct, got {names}.")
        clinical = [m for m in modalities if not m.is_image]
        if clinical and clinical_csv is None:
            raise DyMoInputError(f"cohort: clinical modality {clinical[0].name!r} needs 'clinical_csv'.")
        fields = [f for m in clinical for f in m.fields]
        dup = sorted({f for f in fields if fields.count(f) > 1})
        if dup:
            raise DyMoInputError(f"cohort: clinical field(s) {dup} belong to more than one clinical modality.")
        clash = sorted(set(fields) & set(names))
        if clash:
            raise DyMoInputError(f"cohort: clinical field(s) {clash} have the name of a modality; rename one of them.")
        from monai_dymo.cohort.plan import check_overrides  # the plan module reads the spec: imported here

        plan_overrides = check_overrides(cfg.get("plan"))
        return cls(
            name=str(cfg.get("name") or "cohort"),
            datalist=datalist,
            data_root=data_root,
            clinical_csv=clinical_csv,
            patient_id=str(cfg.get("patient_id") or "patient_id"),
            label=str(cfg.get("label") or "label"),
            classes=classes,
            modalities=modalities,
            roi=ROISpec.from_config(cfg["roi"], modalities) if cfg.get("roi") is not None else None,
            plan_overrides=plan_overrides,
        )

    # ------------------------------------------------------------------ views
    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def image_modalities(self) -> tuple[ModalityEntry, ...]:
        return tuple(m for m in self.modalities if m.is_image)

    @property
    def clinical_modalities(self) -> tuple[ModalityEntry, ...]:
        return tuple(m for m in self.modalities if not m.is_image)

    @property
    def clinical_fields(self) -> tuple[str, ...]:
        return tuple(f for m in self.clinical_modalities for f in m.fields)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def modality(self, name: str) -> ModalityEntry:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"no modality {name!r} in the cohort (modalities: {list(self.modality_names)}).")

    def groups(self) -> dict[str, list[str]]:
        """Clinical group name -> its fields (``ClinicalFieldsd`` groups)."""
        return {m.name: list(m.fields) for m in self.clinical_modalities}

    def label_index(self, value: Any, patient: str, source: str) -> int:
        """Class index of a datalist label (an index or a class name); ``ValueError`` naming patient and file."""
        if isinstance(value, str) and value in self.classes:
            return self.classes.index(value)
        try:
            index = int(value)
            if float(value) != index:
                raise ValueError
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < len(self.classes):
            raise DyMoInputError(
                f"{source}: patient {patient!r} has label {value!r}, not one of the declared classes "
                f"{list(self.classes)} (or their indices 0..{len(self.classes) - 1})."
            )
        return index

    @staticmethod
    def splits() -> tuple[str, ...]:
        return _SPLITS
