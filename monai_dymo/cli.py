"""``monai-dymo`` command line.

``monai-dymo demo`` is the project's main job: it prepares PolyMNIST from MNIST and the five background photographs
(once), writes the seeded missing patterns of the test split, and runs the PolyMNIST bundle's ``inference`` config with
the shipped weights, which writes the per-sample reliability report (CSV, JSON, summary PNG).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "default_bundle_dir", "default_shared_data"]


def _project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_bundle_dir() -> Path:
    """The PolyMNIST bundle of a source checkout (``bundles/polymnist_dymo``)."""
    return _project_root() / "bundles" / "polymnist_dymo"


def default_shared_data() -> Path:
    """``../shared/data`` beside a source checkout."""
    return _project_root().parent / "shared" / "data"


def _demo(args: argparse.Namespace) -> int:
    from monai.bundle import run

    bundle = Path(args.bundle).resolve()
    configs = bundle / "configs"
    if not (configs / "inference.yaml").is_file():
        raise FileNotFoundError(f"bundle config not found: {configs / 'inference.yaml'} (pass --bundle).")
    for weights in ("fusion.pt", "recovery.pt", "calibration.pt"):
        if not (bundle / "models" / weights).is_file():
            raise FileNotFoundError(f"bundle weights not found: {bundle / 'models' / weights}")
    dataset_dir = Path(args.dataset_dir).resolve()
    overrides = {
        "bundle_root": str(bundle),
        "dataset_dir": str(dataset_dir),
        "mnist_path": str(Path(args.mnist).resolve()),
        "backgrounds_dir": str(Path(args.backgrounds).resolve()),
        "missing_rate": args.missing_rate,
        "pattern_seed": args.seed,
    }
    if args.max_samples is not None:
        overrides["max_samples"] = args.max_samples
    if args.output_dir is not None:
        overrides["output_dir"] = str(Path(args.output_dir).resolve())
    common = str(configs / "common.yaml")
    run(
        config_file=[common, str(configs / "prepare_data.yaml")],
        logging_file=str(configs / "logging.conf"),
        **overrides,
    )
    run(
        config_file=[common, str(configs / "inference.yaml")],
        logging_file=str(configs / "logging.conf"),
        **overrides,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monai-dymo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run DyMo inference on PolyMNIST with the shipped bundle weights")
    shared = default_shared_data()
    demo.add_argument("--bundle", default=str(default_bundle_dir()), help="bundle folder (default: %(default)s)")
    demo.add_argument("--mnist", default=str(shared / "mnist" / "mnist.npz"), help="MNIST npz (default: %(default)s)")
    demo.add_argument(
        "--backgrounds",
        default=str(shared / "polymnist_backgrounds"),
        help="folder of the five background photographs (default: %(default)s)",
    )
    demo.add_argument(
        "--dataset-dir",
        default=str(_project_root() / "outputs" / "polymnist"),
        help="where PolyMNIST is (or is built) (default: %(default)s)",
    )
    demo.add_argument("--output-dir", default=None, help="report folder root (default: the bundle's runs/)")
    demo.add_argument("--missing-rate", type=float, default=0.8, choices=[0.2, 0.4, 0.6, 0.8])
    demo.add_argument("--seed", type=int, default=0, choices=[0, 1, 2], help="missing-pattern seed")
    demo.add_argument("--max-samples", type=int, default=None, help="use only the first N test samples")
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except Exception as e:  # bundle configs wrap errors in RuntimeError: report the root cause of input problems
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, (FileNotFoundError, ValueError)):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"monai-dymo: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
