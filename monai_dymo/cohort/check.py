"""``monai-dymo check <cohort.yaml>``: every check a cohort bundle stage makes before it starts, run up front, with
every problem listed at once.

Checked: the cohort file (YAML, the ``cohort`` mapping, every modality entry, the classes), the datalist (file, JSON,
each split: patient ids, labels against the classes), the clinical table (file, id column, declared field columns),
the image files (how many are not found, a note: a missing file is a missing modality, not an error), the cohort's
plan (every generic choice with its reason, as the prepare stage writes it; a warning for every rare class), and, when
they exist, the clinical statistics and the weights of the model folder against the networks the bundle builds for this
cohort (fusion, recovery, calibration).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["check_cohort"]


def _message(e: BaseException) -> str:
    from monai_dymo.errors import input_error

    root = input_error(e) or e
    return " ".join(str(root).split()) or type(root).__name__


def check_cohort(
    cohort_file: str | Path,
    bundle_dir: str | Path | None = None,
    bundle_root: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[list[str], list[str]]:
    """Run every input check of the cohort bundle on ``cohort_file``.

    Args:
        cohort_file: the user's cohort YAML (top-level key ``cohort``).
        bundle_dir: the cohort bundle (its ``configs/common.yaml`` builds the networks whose weights are checked);
            ``None``: no weight checks.
        bundle_root: the stages' ``--bundle_root`` (where ``models/<cohort>/`` is); default ``bundle_dir``.
        overrides: further bundle overrides, as on the stages' command line (e.g. ``{"model_dir": ...}``,
            ``{"network_def#dim": 16}``).

    Returns:
        ``(problems, notes)``: one line per problem (naming the file and the field), and informative lines (the plan's
        table; a rare class as a line starting ``warning:``).
    """
    import yaml

    from monai_dymo.cohort.datalist import load_split, read_clinical_table, read_datalist
    from monai_dymo.cohort.plan import fingerprint, imbalance_warnings, make_plan
    from monai_dymo.cohort.spec import CohortSpec, ModalityEntry
    from monai_dymo.keys import DyMoKeys

    problems: list[str] = []
    notes: list[str] = []
    path = Path(cohort_file)
    if not path.is_file():
        return [f"cohort file not found: {path}"], notes
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        return [f"cohort file {path} is not valid YAML: {' '.join(str(e).split())}"], notes
    if not isinstance(doc, Mapping) or "cohort" not in doc:
        return [f"cohort file {path}: no top-level key 'cohort' (the cohort is described under 'cohort:')."], notes
    cfg = doc["cohort"]
    try:
        spec = CohortSpec.from_config(cfg)
    except ValueError as e:
        problems.append(f"{path}: {_message(e)}")
        mods = cfg.get("modalities") if isinstance(cfg, Mapping) else None
        if isinstance(mods, Sequence) and not isinstance(mods, (str, bytes)):
            for i, m in enumerate(mods):  # every bad modality entry, not only the first
                try:
                    ModalityEntry.from_config(m, i)
                except ValueError as e2:
                    line = f"{path}: {_message(e2)}"
                    if line not in problems:
                        problems.append(line)
        return problems, notes
    notes.append(f"cohort {spec.name!r}: classes {list(spec.classes)}; modalities "
                 + ", ".join(f"{m.name} ({m.kind})" for m in spec.modalities))

    table = None
    if spec.clinical_modalities:
        try:
            table = read_clinical_table(spec)
        except (ValueError, FileNotFoundError) as e:
            problems.append(_message(e))
    try:
        splits = read_datalist(spec)
    except (ValueError, FileNotFoundError) as e:
        problems.append(_message(e))
        splits = {}
    for required in ("training", "validation"):
        if splits and required not in splits:
            notes.append(f"datalist {spec.datalist} has no '{required}' list: the training stages cannot run on it.")
    loaded: dict[str, list[dict[str, Any]]] = {}
    for split in spec.splits():
        if split not in splits:
            continue
        try:
            entries = load_split(spec, split, clinical=table if table is not None else False)
        except (ValueError, FileNotFoundError) as e:
            problems.append(_message(e))
            continue
        not_found: dict[str, int] = {}
        for e in entries:
            for m in spec.image_modalities:
                value = e.get(m.name)
                files = value if isinstance(value, list) else [value] if value is not None else []
                if any(not Path(f).exists() for f in files):
                    not_found[m.name] = not_found.get(m.name, 0) + 1
                    e[DyMoKeys.REASONS] = {**(e.get(DyMoKeys.REASONS) or {}), m.name: "file not found"}
        detail = ", ".join(f"{m}: {n} file(s) not found" for m, n in not_found.items())
        notes.append(f"{split}: {len(entries)} patients" + (f" ({detail}; counted as missing)" if detail else ""))
        loaded[split] = entries

    plan = make_plan(fingerprint(spec, loaded), spec.plan_overrides)
    notes.append("plan (the prepare stage writes it as plan.json; the cohort file's plan: block overrides a choice):")
    notes += [f"  {line}" for line in plan.table()]
    notes += [f"warning: {line}" for line in imbalance_warnings(plan.fingerprint, plan.class_weighting)]

    if bundle_dir is not None:
        problems += _check_weights(spec, path, Path(bundle_dir), bundle_root, overrides, notes)
    return problems, notes


def _check_weights(
    spec: Any, cohort_file: Path, bundle_dir: Path, bundle_root: Any, overrides: Mapping[str, Any] | None,
    notes: list[str],
) -> list[str]:
    """The model folder's statistics and weights against the networks the bundle builds for this cohort."""
    from monai.bundle import ConfigParser

    common = bundle_dir / "configs" / "common.yaml"
    if not common.is_file():
        return [f"bundle not found: {common}"]
    parser = ConfigParser()
    parser.read_config([str(common), str(common.with_name("dymo.yaml")), str(cohort_file)])
    parser["bundle_root"] = str(bundle_root if bundle_root is not None else bundle_dir)
    parser["device"] = "$torch.device('cpu')"
    for k, v in (overrides or {}).items():
        parser[k] = v
    problems: list[str] = []
    try:
        model_dir = parser.get_parsed_content("model_dir")
        stats_file = parser.get_parsed_content("stats_file")
    except Exception as e:  # noqa: BLE001 - any failure here is a problem to list
        return [_message(e)]
    if spec.clinical_modalities and not Path(stats_file).is_file():
        notes.append(f"clinical statistics not there yet: {stats_file} (written by the prepare stage); weights not checked.")
        return problems
    checks = (("fusion_weights", "load_fusion_weights", "train"), ("recovery_weights", "trained_recovery", "train_recovery"),
              ("calibration_file", "calibration", "calibrate"))
    for file_id, load_id, stage in checks:
        file = parser.get_parsed_content(file_id)
        if not Path(file).is_file():
            notes.append(f"{Path(file).name} not there yet in {model_dir} (written by the {stage} stage).")
            continue
        try:
            parser.get_parsed_content(load_id)
            notes.append(f"{file}: fits this cohort's network.")
        except Exception as e:  # noqa: BLE001 - any failure here is a problem to list
            problems.append(_message(e))
    return problems
