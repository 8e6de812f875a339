"""The two bundles name the same things the same way and state DyMo's settings once (configs/dymo.yaml)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "bundles" / "cohort_dymo" / "configs"
POLYMNIST = ROOT / "bundles" / "polymnist_dymo" / "configs"
# what dymo.yaml defines and no other config file may restate (`key_metric` is the one a stage may set: evaluate's)
DYMO_KEYS = {
    "temperature", "margin", "margin_source", "refer_alpha", "refer_delta", "refer_guarantee", "refer_per_class",
    "holdout_fraction", "holdout_seed", "max_patient_pages", "pseudonymize_key", "report_templates", "inferer",
    "report_writer", "evaluator",
}
# what both common.yaml define under the same id (dymo.yaml reads some of them)
COMMON_KEYS = {
    "bundle_root", "model_dir", "fusion_weights", "recovery_weights", "calibration_file", "device", "num_workers",
    "num_threads", "modalities", "class_names", "clinical_fields", "modality_spec", "network_def", "network",
    "recovery_def", "recovery", "load_fusion_weights", "trained_recovery", "calibration",
}


def _keys(path: Path) -> set[str]:
    return set(yaml.safe_load(path.read_text()) or {})


def test_dymo_fragment_is_byte_identical_in_both_bundles():
    cohort, polymnist = (COHORT / "dymo.yaml").read_bytes(), (POLYMNIST / "dymo.yaml").read_bytes()
    assert cohort == polymnist, "bundles/*/configs/dymo.yaml differ: make the same edit in both"
    assert DYMO_KEYS <= _keys(COHORT / "dymo.yaml")


def test_dymo_settings_are_stated_only_in_the_fragment():
    for configs in (COHORT, POLYMNIST):
        for path in sorted(configs.glob("*.yaml")):
            if path.name != "dymo.yaml":
                assert not _keys(path) & DYMO_KEYS, f"{path}: {sorted(_keys(path) & DYMO_KEYS)} belong in dymo.yaml"


def test_both_bundles_use_the_same_names():
    # every config file of the cohort bundle has its namesake in the PolyMNIST bundle (which adds compare, export and
    # verify_net), but the cohort's pretrain stage (self-supervised, on a hospital's unlabelled images)
    cohort_files = {p.name for p in COHORT.iterdir() if p.is_file()} - {"pretrain.yaml"}
    polymnist_files = {p.name for p in POLYMNIST.iterdir() if p.is_file()}
    assert cohort_files <= polymnist_files, sorted(cohort_files - polymnist_files)
    for configs in (COHORT, POLYMNIST):
        assert COMMON_KEYS <= _keys(configs / "common.yaml"), sorted(COMMON_KEYS - _keys(configs / "common.yaml"))


def test_every_command_merges_the_fragment_right_after_common():
    """Each `--config_file` list in the configs, the docs and the notebooks starts with common.yaml, dymo.yaml."""
    files = [*COHORT.glob("*.yaml"), *POLYMNIST.glob("*.yaml"), ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
             *(ROOT / "bundles").glob("*/docs/*.md"), *(ROOT / "notebooks").glob("*.ipynb")]
    lists = 0
    for path in files:
        for found in re.findall(r"--config_file \\?\"\[([^\]]*)\]", path.read_text()):
            names = [n.strip(" '\\\"") for n in found.split(",")]
            assert names[:2] == ["configs/common.yaml", "configs/dymo.yaml"], f"{path}: {found}"
            lists += 1
    assert lists > 50
