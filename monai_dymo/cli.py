"""The ``monai-dymo`` command line.

``monai-dymo demo`` is the project's main job: it generates the default brain MRI + clinical cohort from the real
brains in ``../shared/data/brain_mri_samples`` (once) and runs the cohort bundle's ``inference`` config with the
shipped weights, which writes the per-patient reliability report (HTML, CSV, JSON, summary PNG).
``monai-dymo polymnist-demo`` is the paper reproduction: it prepares PolyMNIST from MNIST and the five background
photographs (once), writes the seeded missing pattern of the test split for the chosen rate and seed, and runs the
PolyMNIST bundle's ``inference`` config with the shipped weights.
``monai-dymo check <cohort.yaml>`` runs every input check of the cohort bundle's stages up front and lists every
problem at once (exit status 1 when there is any).

Input errors (a file that is not there, a column or a class that does not fit, weights of another network) end every
command with one line, ``monai-dymo: error: <message naming the file and the field>``, and exit status 2; any other
error (a bug) keeps its traceback.

This module imports neither torch nor MONAI until a command runs, so ``--help`` is immediate.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from monai_dymo.errors import DyMoFileNotFoundError, error_line, input_error, install_excepthook

__all__ = [
    "main",
    "build_parser",
    "find_bundle",
    "default_bundle_dir",
    "default_shared_data",
    "missing_rate_arg",
    "seed_arg",
]

BUNDLE_NAME = "polymnist_dymo"
COHORT_BUNDLE_NAME = "cohort_dymo"
COHORT_NAME = "brain_mri_demo"

T = TypeVar("T")

DESCRIPTION = """\
DyMo for MONAI: inference-time dynamic modality selection for incomplete multimodal classification.
"""

CHECK_DESCRIPTION = """\
Run every input check of the cohort bundle's stages on a cohort file, up front, and list every problem at once.

Checked: the cohort file (YAML, every modality entry, the classes), the datalist (file, each split: patient ids,
labels against the classes), the clinical table (file, id column, field columns), how many image files are not found
(a note: a missing file is a missing modality), and, when they exist, the clinical statistics and the weights in the
model folder against the networks the bundle builds for this cohort. Prints the cohort's plan (every generic training
choice with its reason, as the prepare stage writes it) and a warning for every class under 20 % of the training
split. Exit status 1 when there is any problem.
"""

COHORT_DEMO_DESCRIPTION = """\
Run DyMo inference on the default brain MRI + clinical cohort with the shipped cohort bundle weights.

Steps: generate the cohort (360 synthetic patients built from the four real brains of --source: T1, T1c, T2, FLAIR
and clinical fields, with absent sequences, corrupt files and blank clinical fields) into --cohort-dir unless it is
already there, then run the cohort bundle's inference config on its test split. The report (dymo_report.html, .csv,
.json, dymo_summary.png) is written to <output-dir>/inference_testing/.

After a wheel install there is no ../shared/data beside the package: pass --source (or set MONAI_DYMO_BRAIN_SAMPLES)
to the folder of the real brain MRI samples the first time, when the cohort is generated.
"""

DEMO_DESCRIPTION = """\
Run DyMo inference on PolyMNIST with the shipped bundle weights.

Steps: build PolyMNIST from the MNIST archive and the five background photographs into --dataset-dir (skipped when
it is already there), write the missing pattern for --missing-rate and --seed, and run the bundle's inference config.
The report (dymo_report.csv, dymo_report.json, dymo_summary.png) is written to
<output-dir>/inference_rate<rate>_seed<seed>/.
"""


def _project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _is_source_checkout() -> bool:
    root = _project_root()
    return (root / "pyproject.toml").is_file() and (root / "bundles" / BUNDLE_NAME / "configs").is_dir()


def _installed_bundles_dir() -> Path:
    """Where a wheel install puts the bundles (``[tool.setuptools.data-files]`` of pyproject.toml)."""
    return Path(sys.prefix) / "share" / "monai_dymo" / "bundles"


def default_bundle_dir() -> Path:
    """The PolyMNIST bundle of a source checkout (``bundles/polymnist_dymo``)."""
    return _project_root() / "bundles" / BUNDLE_NAME


def default_shared_data() -> Path:
    """``../shared/data`` beside a source checkout."""
    return _project_root().parent / "shared" / "data"


def find_bundle(name: str = BUNDLE_NAME) -> Path | None:
    """The bundle folder: the source checkout's ``bundles/<name>``, else the one installed with the wheel
    (``<sys.prefix>/share/monai_dymo/bundles/<name>``); ``None`` when neither holds ``configs/inference.yaml``."""
    for candidate in (_project_root() / "bundles" / name, _installed_bundles_dir() / name):
        if (candidate / "configs" / "inference.yaml").is_file():
            return candidate
    return None


def _typed_arg(text: str, convert: Callable[[str], T], valid: Callable[[T], bool], unreadable: str, invalid: str) -> T:
    """``convert(text)``, or ``argparse.ArgumentTypeError`` (``"<unreadable>, got 'text'"`` when it cannot be
    converted, ``"<invalid>, got text"`` when ``valid`` refuses the value)."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{unreadable}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{invalid}, got {text}")
    return value


def missing_rate_arg(text: str) -> float:
    """argparse type: a missing rate in [0, 1]."""
    in_range = "missing rate must be in [0, 1]"
    return _typed_arg(text, float, lambda r: 0.0 <= r <= 1.0, "missing rate must be a number in [0, 1]", in_range)


def seed_arg(text: str) -> int:
    """argparse type: a non-negative integer seed."""
    message = "seed must be a non-negative integer"
    return _typed_arg(text, int, lambda s: s >= 0, message, message)


def _bundle_configs(path: str | None, name: str, kind: str) -> tuple[Path, Path]:
    """The bundle folder ``path`` and its ``configs`` folder; ``FileNotFoundError`` saying how to give one (``kind``
    names the bundle ``bundles/<name>``) when there is none or it has no ``configs/inference.yaml``."""
    if path is None:
        raise DyMoFileNotFoundError(
            f"the {kind} bundle is not installed with this monai_dymo (looked in {_project_root() / 'bundles' / name} "
            f"and {_installed_bundles_dir() / name}); pass --bundle PATH to a copy of bundles/{name}."
        )
    bundle = Path(path).resolve()
    configs = bundle / "configs"
    if not (configs / "inference.yaml").is_file():
        raise DyMoFileNotFoundError(
            f"no bundle at {bundle} (configs/inference.yaml not found); pass --bundle PATH to a copy of bundles/{name}."
        )
    return bundle, configs


def _require_weights(folder: Path, names: Sequence[str]) -> None:
    """``FileNotFoundError`` naming the first of the files ``folder/<name>`` that is not there."""
    for name in names:
        if not (folder / name).is_file():
            raise DyMoFileNotFoundError(f"bundle weights not found: {folder / name}")


def _report_root(given: str | None, outside_checkout: str) -> str | None:
    """The absolute report folder root: ``given``, else ``outside_checkout`` when running from an installed package
    (never write into it), else None (the bundle's own folder)."""
    if given is None and not _is_source_checkout():
        given = outside_checkout
    return None if given is None else str(Path(given).resolve())


def _cohort_demo(args: argparse.Namespace) -> int:
    bundle, configs = _bundle_configs(args.bundle, COHORT_BUNDLE_NAME, "cohort")
    weights = ("fusion.pt", "recovery.pt", "calibration.pt", "clinical_stats.json")
    _require_weights(bundle / "models" / COHORT_NAME, weights)
    cohort_dir = Path(args.cohort_dir).resolve()
    if not (cohort_dir / "datalist.json").is_file():
        if args.source is None:
            raise DyMoFileNotFoundError(
                f"no cohort at {cohort_dir} and no brain MRI samples to generate it from: pass --source (or set "
                "MONAI_DYMO_BRAIN_SAMPLES) to the folder of the real brain MRI samples <case>/{t1,t1c,t2,flair}.nii.gz."
            )
        from monai_dymo.data.brain_cohort import generate_brain_cohort  # heavy: only once a command runs

        print(f"generating the default cohort into {cohort_dir} (once) ...", file=sys.stderr)
        generate_brain_cohort(cohort_dir, source_dir=args.source, overwrite=True)

    from monai.bundle import run

    overrides: dict = {
        "bundle_root": str(bundle),
        "cohort#datalist": str(cohort_dir / "datalist.json"),
        "cohort#clinical_csv": str(cohort_dir / "clinical.csv"),
        "split": args.split,
    }
    if args.max_patients is not None:
        overrides["max_patients"] = args.max_patients
    output_dir = _report_root(args.output_dir, os.path.join("runs", COHORT_NAME))
    if output_dir is not None:
        overrides["work_dir"] = output_dir
    install_excepthook()
    run(
        config_file=[str(configs / name) for name in ("common.yaml", "dymo.yaml", "inference.yaml")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        **overrides,
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    bundle, configs = _bundle_configs(args.bundle, BUNDLE_NAME, "PolyMNIST")
    _require_weights(bundle / "models", ("fusion.pt", "recovery.pt", "calibration.pt"))
    if args.mnist is None or args.backgrounds is None:
        raise DyMoFileNotFoundError("pass --mnist (MNIST .npz) and --backgrounds (folder of the five photographs).")

    from monai.bundle import run  # heavy: only once a command runs

    overrides = {
        "bundle_root": str(bundle),
        "dataset_dir": str(Path(args.dataset_dir).resolve()),
        "mnist_path": str(Path(args.mnist).resolve()),
        "backgrounds_dir": str(Path(args.backgrounds).resolve()),
        "missing_rate": args.missing_rate,
        "pattern_seed": args.seed,
    }
    if args.max_samples is not None:
        overrides["max_samples"] = args.max_samples
    output_dir = _report_root(args.output_dir, "runs")
    if output_dir is not None:
        overrides["output_dir"] = output_dir
    shared = [str(configs / "common.yaml"), str(configs / "dymo.yaml")]
    logging_file = str(configs / "logging.conf")
    # the pattern of this rate and seed only (patterns are nested across rates: the file is the same either way)
    prepare = {**overrides, "missing_rates": [args.missing_rate], "pattern_seeds": [args.seed]}
    run(config_file=[*shared, str(configs / "prepare.yaml")], logging_file=logging_file, **prepare)
    run(config_file=[*shared, str(configs / "inference.yaml")], logging_file=logging_file, **overrides)
    return 0


def _check(args: argparse.Namespace) -> int:
    import yaml

    from monai_dymo.cohort.check import check_cohort  # heavy: only once a command runs

    overrides = {}
    for key, value in args.set or []:
        overrides[key] = yaml.safe_load(value)
    if args.model_dir is not None:
        overrides["model_dir"] = str(Path(args.model_dir).resolve())
    bundle = None if args.bundle is None else Path(args.bundle).resolve()
    problems, notes = check_cohort(args.cohort_file, bundle_dir=bundle, bundle_root=args.bundle_root,
                                   overrides=overrides)
    for line in notes:
        print(f"  {line}")
    if bundle is None:
        print("  (no cohort bundle found: weights not checked; pass --bundle)")
    if problems:
        print(f"{len(problems)} problem(s) in {args.cohort_file}:")
        for line in problems:
            print(f"  - {line}")
        return 1
    print(f"no problem found in {args.cohort_file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``monai-dymo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="monai-dymo", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    source = _is_source_checkout()
    shared = default_shared_data()
    cohort = sub.add_parser(
        "demo",
        help="brain MRI + clinical cohort: generate it (once), run DyMo inference with the shipped weights",
        description=COHORT_DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cohort_bundle = find_bundle(COHORT_BUNDLE_NAME)
    cohort.add_argument(
        "--bundle", default=None if cohort_bundle is None else str(cohort_bundle), help="bundle folder (default: %(default)s)"
    )
    cohort.add_argument(
        "--cohort-dir",
        default=str(_project_root() / "outputs" / "brain_cohort") if source else os.path.join("outputs", "brain_cohort"),
        help="where the default cohort is, or is generated (default: %(default)s)",
    )
    cohort.add_argument(
        "--source",
        default=str(shared / "brain_mri_samples") if source else os.environ.get("MONAI_DYMO_BRAIN_SAMPLES"),
        help="folder of the real brain MRI samples <case>/{t1,t1c,t2,flair}.nii.gz, needed once to generate the "
        "cohort (default: %(default)s; after a wheel install: $MONAI_DYMO_BRAIN_SAMPLES)",
    )
    cohort.add_argument(
        "--output-dir",
        default=None,
        help="report folder root (default: the bundle's runs/brain_mri_demo in a source checkout, ./runs otherwise)",
    )
    cohort.add_argument("--split", default="testing", choices=["training", "validation", "testing"],
                        help="datalist split to run on (default: %(default)s)")
    cohort.add_argument("--max-patients", type=int, default=None, help="use only the first N patients of the split")
    cohort.set_defaults(func=_cohort_demo)
    demo = sub.add_parser(
        "polymnist-demo",
        help="run DyMo inference on PolyMNIST with the shipped bundle weights (the paper reproduction)",
        description=DEMO_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bundle = find_bundle()
    demo.add_argument(
        "--bundle",
        default=None if bundle is None else str(bundle),
        help="bundle folder (default: %(default)s)",
    )
    demo.add_argument(
        "--mnist",
        default=str(shared / "mnist" / "mnist.npz") if source else None,
        help="MNIST .npz with x_train, y_train, x_test, y_test (default: %(default)s)",
    )
    demo.add_argument(
        "--backgrounds",
        default=str(shared / "polymnist_backgrounds") if source else None,
        help="folder of the five background photographs (default: %(default)s)",
    )
    demo.add_argument(
        "--dataset-dir",
        default=str(_project_root() / "outputs" / "polymnist") if source else os.path.join("outputs", "polymnist"),
        help="where PolyMNIST is, or is built (default: %(default)s)",
    )
    demo.add_argument(
        "--output-dir",
        default=None,
        help="report folder root (default: the bundle's runs/ in a source checkout, ./runs otherwise)",
    )
    demo.add_argument(
        "--missing-rate",
        type=missing_rate_arg,
        default=0.8,
        help="probability that each modality is missing, in [0, 1] (default: %(default)s)",
    )
    demo.add_argument(
        "--seed", type=seed_arg, default=0, help="missing-pattern seed, any integer >= 0 (default: %(default)s)"
    )
    demo.add_argument("--max-samples", type=int, default=None, help="use only the first N test samples")
    demo.set_defaults(func=_demo)
    check = sub.add_parser(
        "check",
        help="run every input check of the cohort bundle on a cohort file and list every problem at once",
        description=CHECK_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("cohort_file", help="the cohort YAML (top-level key 'cohort')")
    check.add_argument(
        "--bundle", default=None if cohort_bundle is None else str(cohort_bundle),
        help="cohort bundle whose networks the weights must fit (default: %(default)s)",
    )
    check.add_argument("--bundle-root", default=None,
                       help="the stages' --bundle_root, where models/<cohort>/ is (default: the bundle folder)")
    check.add_argument("--model-dir", default=None, help="the stages' --model_dir (default: <bundle-root>/models/<cohort>)")
    check.add_argument("--set", nargs=2, action="append", metavar=("KEY", "VALUE"),
                       help="a bundle override the stages use, e.g. --set network_def#dim 16 (repeatable)")
    check.set_defaults(func=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:  # bundle configs wrap errors in RuntimeError: report the root cause of input problems
        cause: BaseException | None = input_error(e)
        if cause is None:  # a file met by MONAI itself (e.g. a config file not found); any other error is a bug
            cause = e
            while cause is not None and not isinstance(cause, FileNotFoundError):
                cause = cause.__cause__
        if cause is None:
            raise
        sys.stdout.flush()
        print(error_line(cause), file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
