"""The command lines: cheap imports, plain help, seeds and rates, and finding the bundle in a checkout or a wheel."""

from __future__ import annotations

import glob
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import monai_dymo.cli as cli
from monai_dymo.data.__main__ import build_parser as data_parser
from monai_dymo.data.__main__ import main as data_main
from monai_dymo.data.missing_patterns import pattern_filename

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["monai_dymo", "monai_dymo.cli", "monai_dymo.data.__main__"])
def test_cli_modules_import_neither_torch_nor_monai(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'monai', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_still_import():
    from monai_dymo import DyMoInferer, SubsetCalibration, load_weights  # noqa: F401
    import monai_dymo

    assert monai_dymo.networks.build_polymnist_fusion is not None
    assert "DyMoInferer" in dir(monai_dymo) and "DyMoInferer" in monai_dymo.__all__
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        monai_dymo.nonexistent  # noqa: B018


def _demo_help() -> str:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return parser.format_help() + sub.choices["polymnist-demo"].format_help()


def test_help_is_plain_text():
    for text in (_demo_help(), data_parser().format_help()):
        assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert "[0, 1]" in _demo_help()


@pytest.mark.parametrize("rate", ["0", "0.35", "1"])
def test_demo_accepts_any_rate_in_0_1_and_any_seed(rate):
    args = cli.build_parser().parse_args(["polymnist-demo", "--missing-rate", rate, "--seed", "123456"])
    assert args.missing_rate == float(rate) and args.seed == 123456


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--missing-rate", "1.5"], "missing rate must be in [0, 1], got 1.5"),
        (["--missing-rate", "-0.1"], "missing rate must be in [0, 1]"),
        (["--missing-rate", "high"], "missing rate must be a number"),
        (["--seed", "-1"], "seed must be a non-negative integer"),
    ],
)
def test_demo_refuses_out_of_range_rates_and_seeds(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["polymnist-demo", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_patterns_command_any_rate_and_seed(tmp_path, capsys):
    out = tmp_path / "patterns"
    assert data_main(["patterns", "--num-samples", "20", "--modalities", "a", "b", "--rates", "0.35", "--seeds", "77",
                      "--out", str(out)]) == 0
    assert (out / "missing_rate0.35_seed77.csv").is_file()
    with pytest.raises(SystemExit):
        data_main(["patterns", "--num-samples", "20", "--modalities", "a", "--rates", "1.2", "--out", str(out)])
    assert "missing rate must be in [0, 1], got 1.2" in capsys.readouterr().err


def test_pattern_filename_refuses_out_of_range():
    assert pattern_filename(0.35, 77) == "missing_rate0.35_seed77.csv"
    with pytest.raises(ValueError, match=r"missing rate.*1\.5.*\[0, 1\]|missing rate.*\[0, 1\].*1\.5"):
        pattern_filename(1.5, 0)
    with pytest.raises(ValueError, match="non-negative"):
        pattern_filename(0.2, -3)


def test_bundle_found_where_a_wheel_installs_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_project_root", lambda: tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert cli.find_bundle() is None
    installed = tmp_path / "prefix" / "share" / "monai_dymo" / "bundles" / "polymnist_dymo"
    (installed / "configs").mkdir(parents=True)
    (installed / "configs" / "inference.yaml").write_text("{}")
    assert cli.find_bundle() == installed
    assert cli.build_parser().parse_args(["polymnist-demo"]).bundle == str(installed)


def test_missing_bundle_says_to_pass_bundle(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_project_root", lambda: tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert cli.main(["polymnist-demo"]) == 2
    err = capsys.readouterr().err
    assert "not installed with this monai_dymo" in err and "--bundle" in err
    assert cli.main(["polymnist-demo", "--bundle", str(tmp_path / "elsewhere")]) == 2
    assert "elsewhere" in capsys.readouterr().err


def test_wheel_data_files_ship_what_the_demo_needs():
    """Every file the demo reads is listed in pyproject's data-files, under the folder find_bundle looks in."""
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    shipped: dict[str, str] = {}
    for target, patterns in data_files.items():
        for pattern in patterns:
            for f in glob.glob(str(ROOT / pattern)):
                shipped[str(Path(f).relative_to(ROOT / "bundles"))] = f"{target}/{Path(f).name}"
    needed = [
        "configs/common.yaml", "configs/dymo.yaml", "configs/prepare.yaml", "configs/inference.yaml",
        "configs/logging.conf", "configs/metadata.json", "models/fusion.pt", "models/recovery.pt",
        "models/calibration.pt", "LICENSE", "large_files.yml", "docs/data_license.txt",
    ]
    for name in needed:
        assert shipped.get(f"polymnist_dymo/{name}") == f"share/monai_dymo/bundles/polymnist_dymo/{name}", name
    cohort_needed = [
        "configs/common.yaml", "configs/dymo.yaml", "configs/inference.yaml", "configs/logging.conf",
        "configs/metadata.json", "models/brain_mri_demo/fusion.pt", "models/brain_mri_demo/recovery.pt",
        "models/brain_mri_demo/calibration.pt", "models/brain_mri_demo/clinical_stats.json", "LICENSE",
        "large_files.yml", "docs/data_license.txt",
    ]
    for name in cohort_needed:
        assert shipped.get(f"cohort_dymo/{name}") == f"share/monai_dymo/bundles/cohort_dymo/{name}", name


def test_cohort_demo_help_and_missing_bundle(tmp_path, monkeypatch, capsys):
    assert "brain MRI + clinical cohort" in cli.build_parser().format_help()
    monkeypatch.setattr(cli, "_project_root", lambda: tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "cohort bundle is not installed" in err and "--bundle" in err


def test_top_level_help_lists_each_command_once():
    text = cli.build_parser().format_help()
    for command in ("demo", "polymnist-demo", "check"):
        assert sum(line.split()[:1] == [command] for line in text.splitlines()) == 1, text


def test_cohort_demo_source_from_environment_after_a_wheel_install(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_project_root", lambda: tmp_path / "site-packages")  # not a source checkout
    monkeypatch.setenv("MONAI_DYMO_BRAIN_SAMPLES", str(tmp_path / "brains"))
    args = cli.build_parser().parse_args(["demo"])
    assert args.source == str(tmp_path / "brains")
    assert "MONAI_DYMO_BRAIN_SAMPLES" in cli.COHORT_DEMO_DESCRIPTION


def _cohort_file(tmp_path, cfg):
    import yaml

    path = tmp_path / "my_cohort.yaml"
    path.write_text(yaml.safe_dump({"cohort": cfg}))
    return path


def test_check_command_passes_a_good_cohort(tmp_path, capsys):
    from tests.cohort_fixtures import make_tiny_cohort

    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=8)
    code = cli.main(["check", str(_cohort_file(tmp_path, cfg)), "--bundle-root", str(tmp_path / "bundle")])
    out = capsys.readouterr().out
    assert code == 0 and "no problem found" in out
    assert "testing: 3 patients (ct: 1 file(s) not found; counted as missing)" in out
    assert "clinical statistics not there yet" in out  # no prepare stage yet: a note, not a problem


def test_check_command_lists_every_problem_at_once(tmp_path, capsys):
    import json

    import torch

    from monai_dymo.cohort import CohortSpec, prepare_cohort
    from tests.cohort_fixtures import make_tiny_cohort

    cfg = make_tiny_cohort(tmp_path / "data", n_train=6, n_val=3, n_test=3, size=8)
    models = tmp_path / "bundle" / "models" / "tiny"
    prepare_cohort(CohortSpec.from_config(cfg), tmp_path / "prepared", stats_file=models / "clinical_stats.json")
    torch.save({"not": torch.zeros(2)}, models / "fusion.pt")  # weights of another network
    datalist = json.loads(Path(cfg["datalist"]).read_text())
    datalist["testing"][1]["label"] = "z"  # not one of the classes
    datalist["validation"][0]["patient_id"] = datalist["validation"][1]["patient_id"]  # a duplicated id
    Path(cfg["datalist"]).write_text(json.dumps(datalist))
    code = cli.main(["check", str(_cohort_file(tmp_path, cfg)), "--bundle-root", str(tmp_path / "bundle")])
    out = capsys.readouterr().out
    assert code == 1 and "3 problem(s)" in out, out
    problems = [line for line in out.splitlines() if line.startswith("  - ")]
    assert len(problems) == 3
    assert any("has label 'z', not one of the declared classes ['a', 'b', 'c']" in p for p in problems)
    assert any("appears twice in 'validation'" in p for p in problems)
    assert any(f"weights {models / 'fusion.pt'}" in p and "do not fit the DynamicFusionTransformer" in p for p in problems), problems
    assert "recovery.pt not there yet" in out

    # a broken cohort file: every bad modality entry listed, not only the first
    cfg["modalities"][0]["kind"] = "imgae3d"
    cfg["modalities"][1]["spatial_size"] = [8]
    code = cli.main(["check", str(_cohort_file(tmp_path, cfg))])
    out = capsys.readouterr().out
    assert code == 1 and "unknown modality kind 'imgae3d'" in out and "spatial_size must have 2 values" in out
    assert cli.main(["check", str(tmp_path / "nope.yaml")]) == 1
    assert "cohort file not found" in capsys.readouterr().out
