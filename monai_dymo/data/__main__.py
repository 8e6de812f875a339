"""Command line: ``python -m monai_dymo.data {polymnist,patterns,brain-cohort,derm7pt,busbra} ...`` (``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from monai_dymo.cli import missing_rate_arg, seed_arg

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m monai_dymo.data",
        description="Build the PolyMNIST dataset, seeded missing-modality pattern files, the synthetic brain MRI cohort and "
        "the derm7pt and BUS-BRA cohort files.",
    )
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{polymnist,patterns,brain-cohort,derm7pt,busbra}")

    p = sub.add_parser(
        "polymnist",
        help="build PolyMNIST (train/val/test) from an MNIST .npz and five background photographs",
        description="Build PolyMNIST: 5 modalities m0..m4 (backgrounds astronaut, chelsea, coffee, rocket, "
        "hubble_deep_field); train from MNIST train (60,000), val/test from MNIST test (3,000/7,000 by a seeded "
        "permutation). Writes polymnist_{split}.npz (images uint8 [N,5,3,28,28], labels int64 [N], ...) and/or PNG "
        "folders {split}/m{k}/{i}.{label}.png, plus polymnist_info.json and preview.png.",
    )
    p.add_argument("--mnist", required=True,
                   help="MNIST .npz with x_train, y_train, x_test, y_test (uint8 28x28 images)")
    p.add_argument("--backgrounds", required=True,
                   help="folder holding astronaut.jpg, chelsea.jpg, coffee.jpg, rocket.jpg, hubble_deep_field.jpg")
    p.add_argument("--out", required=True, help="output folder (created if needed)")
    p.add_argument("--seed", type=seed_arg, default=0, help="master seed (default 0)")
    p.add_argument("--format", choices=("npz", "png", "both"), default="npz",
                   help="npz files per split, PNG folders in the original layout, or both (default npz)")
    p.add_argument("--splits", nargs="+", choices=("train", "val", "test"), default=["train", "val", "test"],
                   help="splits to build (default all)")
    p.add_argument("--val-size", type=int, default=3000, help="validation samples taken from MNIST test (default 3000)")
    p.add_argument("--max-samples", type=int, default=None,
                   help="use only the first N MNIST images of each split (small CI-sized datasets)")
    p.add_argument("--compress", action="store_true", help="write compressed npz (smaller, slower to load)")
    p.add_argument("--allow-repeats", action="store_true",
                   help="do not repair the rare samples where two modalities drew the same MNIST image")
    p.add_argument("--no-preview", action="store_true", help="do not write preview.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    q = sub.add_parser(
        "patterns",
        help="write seeded missing-modality pattern CSVs (one per rate and seed)",
        description="Write missing_rate{rate}_seed{seed}.csv files (header index,<modalities>; 1 = observed, "
        "0 = missing; each modality missing independently with probability rate; an all-missing row keeps one "
        "uniformly random modality) plus summary.json / summary.md with the realised rates.",
    )
    q.add_argument("--num-samples", type=int, required=True,
                   help="rows per file (e.g. 7000 for the PolyMNIST test split)")
    q.add_argument("--modalities", nargs="+", required=True,
                   help="modality names, in column order (e.g. m0 m1 m2 m3 m4)")
    q.add_argument("--rates", nargs="+", type=missing_rate_arg, default=[0.2, 0.4, 0.6, 0.8],
                   help="missing rates, each in [0, 1] (default 0.2 0.4 0.6 0.8)")
    q.add_argument("--seeds", nargs="+", type=seed_arg, default=[0, 1, 2],
                   help="pattern seeds, integers >= 0 (default 0 1 2)")
    q.add_argument("--out", required=True, help="output folder (created if needed)")

    b = sub.add_parser(
        "brain-cohort",
        help="generate the synthetic brain MRI + clinical cohort (natural missingness) from the real brain samples",
        description="Generate a synthetic brain MRI (T1, T1c, T2, FLAIR) + clinical (age, sex, KPS, LDH) cohort from "
        "the four real brains in brain_mri_samples: deformed, re-contrasted brains with a synthetic lesion whose class "
        "(glioma-like, metastasis-like, meningioma-like) shows differently in each sequence and in the clinical fields; "
        "absent sequences, corrupt files, DICOM series, blank clinical cells and missing CSV rows. Writes "
        "images/<pid>/<seq>.nii.gz (or DICOM folders), datalist.json, clinical.csv, classes.json, manifest.json, "
        "README.md. Deterministic for a seed.",
    )
    b.add_argument("--out", default="outputs/brain_cohort", help="output folder (default outputs/brain_cohort)")
    b.add_argument("--source", default=None,
                   help="brain_mri_samples folder with <case>/{t1,t1c,t2,flair}.nii.gz "
                   "(default $MONAI_DYMO_BRAIN_SAMPLES or ../shared/data/brain_mri_samples)")
    b.add_argument("--num-patients", type=int, default=360, help="patients (default 360: 240/60/60)")
    b.add_argument("--size", type=int, default=96, help="stored grid size^3 over a 216 mm cube (default 96)")
    b.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    b.add_argument("--num-dicom", type=int, default=None, help="sequences stored as DICOM series (default 3%%)")
    b.add_argument("--num-corrupt", type=int, default=None, help="corrupt files per kind (default 1%%)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    b.add_argument("--quiet", action="store_true", help="no progress lines")

    d = sub.add_parser(
        "derm7pt",
        help="cohort files of derm7pt (clinical photo + dermoscopy + metadata, 5-class diagnosis) from release_v0",
        description="Write the derm7pt cohort for bundles/cohort_dymo from an unpacked release_v0 folder (images/, "
        "meta/meta.csv, meta/{train,valid,test}_indexes.csv; images referenced, not copied): datalist.json with the "
        "official split, clinical.csv (sex, location, elevation: what is known before diagnosis; the 7-point "
        "criteria, management, diagnosis and difficulty are outcomes, never inputs), derm7pt.yaml (RGB image2d "
        "modalities clinic and derm, clinical group metadata; 5 classes BCC, NEV, MEL, MISC, SK as in Kawahara et "
        "al. 2018) and manifest.json. Cases whose clinical photo is missing (notes column) get clinic null with "
        "the reason. Keep --out outside any repository: the images may not be redistributed.",
    )
    d.add_argument("--source", required=True, help="the release_v0 folder")
    d.add_argument("--out", required=True, help="output folder (created if needed)")
    d.add_argument("--size", type=int, nargs="+", default=[128],
                   help="image size after preprocessing: one integer (square) or rows columns (default 128)")
    d.add_argument("--name", default="derm7pt", help="cohort name (default derm7pt)")
    d.add_argument("--work-dir", default=None, help="bundle work_dir written in the cohort file (default <out>/runs)")
    d.add_argument("--model-dir", default=None,
                   help="bundle model_dir written in the cohort file (default <out>/models)")

    u = sub.add_parser(
        "busbra",
        help="cohort files of BUS-BRA (two breast ultrasound views + scanner, benign / malignant) from its folder",
        description="Write the BUS-BRA cohort for bundles/cohort_dymo from an unpacked BUSBRA folder (Images/, "
        "bus_data.csv, 5-fold-cv.csv; images referenced, not copied): datalist.json (one entry per lesion, every image "
        "of a lesion in one split; testing = fold --fold of 5-fold-cv.csv, training / validation a seeded draw 3 : 1 "
        "stratified by class and view count; --fold 0: a seeded 60/20/20 draw), clinical.csv (the scanner: the only "
        "field known before diagnosis; pathology, histology and BI-RADS are outcomes, never inputs), busbra.yaml "
        "(grayscale image2d modalities view1 = left panel or the only image, view2 = right panel; clinical group "
        "acquisition; classes benign, malignant) and manifest.json. Single-view lesions get view2 null with the "
        "reason.",
    )
    u.add_argument("--source", required=True, help="the BUSBRA folder")
    u.add_argument("--out", required=True, help="output folder (created if needed)")
    u.add_argument("--size", type=int, nargs="+", default=[128],
                   help="image size after preprocessing: one integer (square) or rows columns (default 128)")
    u.add_argument("--seed", type=seed_arg, default=0, help="seed of the split draw (default 0)")
    u.add_argument("--fold", type=int, default=1, choices=range(6), metavar="{0,...,5}",
                   help="official 5-fold CV fold used as the test split (default 1); 0: seeded 60/20/20 split")
    u.add_argument("--name", default="busbra", help="cohort name (default busbra)")
    u.add_argument("--work-dir", default=None, help="bundle work_dir written in the cohort file (default <out>/runs)")
    u.add_argument("--model-dir", default=None,
                   help="bundle model_dir written in the cohort file (default <out>/models)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if args.command == "polymnist":
            from monai_dymo.data.polymnist import build_polymnist_to_disk

            info = build_polymnist_to_disk(
                args.mnist, args.backgrounds, args.out, seed=args.seed, fmt=args.format, splits=args.splits,
                val_size=args.val_size, max_samples=args.max_samples, compress=args.compress,
                distinct=not args.allow_repeats, preview=not args.no_preview, progress=not args.quiet,
            )
            report = {"sizes": info["sizes"], "files": info["files"], "seconds": info["build_seconds"]}
            print(json.dumps(report, indent=2))
        elif args.command == "brain-cohort":
            from monai_dymo.data.brain_cohort import generate_brain_cohort

            paths = generate_brain_cohort(
                args.out, source_dir=args.source, num_patients=args.num_patients, size=args.size, seed=args.seed,
                num_dicom=args.num_dicom, num_corrupt=args.num_corrupt, overwrite=args.overwrite,
                progress=not args.quiet,
            )
            manifest = json.loads(paths["manifest"].read_text())
            print(json.dumps({"files": {k: str(v) for k, v in paths.items()}, "summary": manifest["summary"],
                              "seconds": round(time.perf_counter() - start, 1)}, indent=2))
        elif args.command == "derm7pt":
            from monai_dymo.data.derm7pt import build_derm7pt

            if len(args.size) not in (1, 2) or min(args.size) < 1:
                raise ValueError(f"--size takes one or two positive integers, got {args.size}.")
            size = args.size[0] if len(args.size) == 1 else tuple(args.size)
            result = build_derm7pt(args.source, args.out, size=size, name=args.name, work_dir=args.work_dir,
                                   model_dir=args.model_dir)
            print(json.dumps({**{k: str(v) for k, v in result.items() if k != "summary"},
                              "summary": result["summary"], "seconds": round(time.perf_counter() - start, 1)},
                             indent=2))
        elif args.command == "busbra":
            from monai_dymo.data.busbra import build_busbra

            if len(args.size) not in (1, 2) or min(args.size) < 1:
                raise ValueError(f"--size takes one or two positive integers, got {args.size}.")
            size = args.size[0] if len(args.size) == 1 else tuple(args.size)
            result = build_busbra(args.source, args.out, size=size, seed=args.seed, fold=args.fold or None,
                                  name=args.name, work_dir=args.work_dir, model_dir=args.model_dir)
            print(json.dumps({**{k: str(v) for k, v in result.items() if k != "summary"},
                              "summary": result["summary"], "seconds": round(time.perf_counter() - start, 1)},
                             indent=2))
        else:
            from monai_dymo.data.missing_patterns import generate_pattern_files

            summary = generate_pattern_files(args.num_samples, args.modalities, args.rates, args.seeds, args.out)
            for e in summary["files"]:
                print(f"{e['file']}: realised missing rate {e['missing_rate']:.4f} "
                      f"(target {e['rate']:.2f}, expected with keep-one {e['expected_rate_keep_one']:.4f})")
            print(f"wrote {len(summary['files'])} files + summary.json/summary.md to {args.out} "
                  f"in {time.perf_counter() - start:.1f} s")
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
