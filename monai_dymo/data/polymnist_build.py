"""Building PolyMNIST, the five-modality MNIST benchmark, from an MNIST archive and five background photographs.

PolyMNIST (Sutter, Daunhawer & Vogt, ICLR 2021) has five image modalities ``m0..m4``.  Sample ``i`` of a split shows
five *different* handwritten instances of the same digit, one per modality; modality ``k`` draws its instances from
an independent per-digit random permutation of the split's MNIST images and pastes each binarised digit onto a random
28x28 crop of background photograph ``k``, inverting the colour of the crop where the digit's strokes are.

Construction used here (deterministic given ``seed``, via :class:`numpy.random.Generator`):

* **Splits.** ``train`` = the MNIST training set (60,000 images, original order).  The MNIST test set is split by a
  seeded permutation (``SeedSequence([seed, 3])``): its first ``val_size`` (3,000) entries form ``val``, the rest
  (7,000) ``test``; each split's MNIST indices are then sorted, so sample ``i`` of a split takes its label from the
  ``i``-th smallest MNIST index of that split (stored as ``source_index``).  Splitting happens *before* the
  permutations, so a handwritten instance never appears in two splits.
* **Instances.** Per split (generator ``SeedSequence([seed, split_code])``, ``train=0, val=1, test=2``) and per
  modality, each digit's images are randomly permuted among that digit's samples, so modality ``k`` of sample ``i``
  shows MNIST image ``mnist_index[i, k]`` with the same label as sample ``i``, and every MNIST image of the split is
  used exactly once per modality.  Independent permutations occasionally give two modalities of a sample the same
  image (about 1 sample in 6,000 per modality pair); with ``distinct=True`` (default) such collisions are repaired by
  random swaps inside the affected modality's permutation, which keeps it a permutation of the digit's images and
  guarantees five distinct instances per sample.
* **Pixels.** The digit is binarised as in the original (``x / 255 > 0.5``, i.e. ``x >= 128``); a crop with uniformly
  random top-left corner (stored as ``crop_yx``) is taken from the modality's background (RGB ``uint8``) and
  ``pixel = 255 - pixel`` where the digit is on.

Output: ``polymnist_{train,val,test}.npz`` (keys below), optional PNG folders in the original layout
``{split}/m{k}/{i}.{label}.png``, ``polymnist_info.json`` (provenance) and ``preview.png``.

npz keys: ``images`` uint8 ``[N, 5, 3, 28, 28]`` (channel first), ``labels`` int64 ``[N]``, ``modalities`` str ``[5]``,
``backgrounds`` str ``[5]``, ``mnist_index`` int64 ``[N, 5]``, ``source_index`` int64 ``[N]``, ``crop_yx`` int32
``[N, 5, 2]``, ``split`` str scalar, ``seed`` int64 scalar.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.data.polymnist_files import (
    IMAGE_SIZE,
    POLYMNIST_BACKGROUNDS,
    POLYMNIST_MODALITIES,
    load_backgrounds,
    load_mnist_npz,
    progress_bar,
    save_polymnist_npz,
    save_polymnist_png,
    save_preview,
)
from monai_dymo.errors import DyMoInputError

__all__ = [
    "POLYMNIST_SPLITS",
    "digit_permutations",
    "compose_modality",
    "build_polymnist_split",
    "build_polymnist",
    "build_polymnist_to_disk",
]

#: split names and the code used to seed each split's generator
POLYMNIST_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_SPLIT_ASSIGN_CODE = 3


def _repair_collisions(
    perms: np.ndarray, rng: np.random.Generator, max_passes: int = 200, max_restarts: int = 200
) -> None:
    """In place: make ``perms[m, j]`` distinct over ``m`` for every ``j`` by swaps inside each row ``m``.

    ``perms``: int ``[M, n]``, each row a permutation of the same ``n`` values (one digit's images).  A conflicting
    position ``j`` swaps its value with a random position ``k`` when that does not increase the number of conflicts
    at ``j`` and ``k`` (sideways moves escape plateaus); rows that stay stuck are re-drawn.  With large ``n`` the first
    swap almost always resolves a conflict, so each row stays close to an independent uniform permutation.
    """
    num_mod, n = perms.shape
    for m in range(1, num_mod):
        prev = perms[:m]
        row = perms[m]
        for _ in range(max_restarts):
            for _ in range(max_passes):
                conflicts = np.flatnonzero((prev == row[None, :]).any(axis=0))
                if conflicts.size == 0:
                    break
                for j in conflicts:
                    k = int(rng.integers(n))
                    before = int(row[j] in prev[:, j]) + int(row[k] in prev[:, k])
                    after = int(row[k] in prev[:, j]) + int(row[j] in prev[:, k])
                    if after <= before:
                        row[j], row[k] = row[k], row[j]
            else:
                row[:] = row[rng.permutation(n)]
                continue
            break
        else:
            raise RuntimeError(
                f"could not give modality m{m} distinct instances for {n} images of one digit; "
                f"use distinct=False (--allow-repeats)"
            )


def digit_permutations(
    labels: np.ndarray, num_modalities: int, rng: np.random.Generator, distinct: bool = True
) -> np.ndarray:
    """Per modality, an independent random permutation of each digit's images.

    Args:
        labels: int ``[N]`` labels of the split's MNIST images (sample ``i`` has label ``labels[i]``).
        num_modalities: ``M``.
        rng: generator (consumed in a fixed order: modality-major, digits ascending).
        distinct: repair the rare cases where two modalities of one sample got the same image (see module doc).

    Returns:
        int64 ``[N, M]``: ``out[i, m]`` indexes ``labels`` (position in the split), with
        ``labels[out[i, m]] == labels[i]``; each column is a permutation of ``0..N-1``.
    """
    labels = np.asarray(labels)
    out = np.empty((labels.shape[0], num_modalities), dtype=np.int64)
    digits = np.unique(labels)
    members = {int(d): np.flatnonzero(labels == d) for d in digits}
    if distinct:
        for d, idx in members.items():
            if idx.size < num_modalities:
                raise DyMoInputError(
                    f"digit {d} has only {idx.size} image(s) in this split; {num_modalities} distinct instances "
                    f"per sample need at least {num_modalities}"
                )
    perms = {d: np.empty((num_modalities, idx.size), dtype=np.int64) for d, idx in members.items()}
    for m in range(num_modalities):
        for d, idx in members.items():
            perms[d][m] = idx[rng.permutation(idx.size)]
    for d, idx in members.items():
        if distinct:
            _repair_collisions(perms[d], rng)
        out[idx] = perms[d].T
    return out


def compose_modality(digits: np.ndarray, background: np.ndarray, crop_yx: np.ndarray) -> np.ndarray:
    """Paste binarised digits, colour-inverted, onto 28x28 crops of one background.

    Args:
        digits: uint8 ``[N, 28, 28]`` MNIST images.
        background: uint8 ``[H, W, 3]``.
        crop_yx: int ``[N, 2]`` top-left corners of the crops.

    Returns:
        uint8 ``[N, 3, 28, 28]`` where ``out = 255 - crop`` on the digit (``digit >= 128``) and ``crop`` elsewhere.
    """
    windows = np.lib.stride_tricks.sliding_window_view(background, (IMAGE_SIZE, IMAGE_SIZE), axis=(0, 1))
    crops = windows[crop_yx[:, 0], crop_yx[:, 1]]  # [N, 3, 28, 28] (copy)
    on = (digits >= 128)[:, None, :, :]  # x / 255 > 0.5
    return np.where(on, 255 - crops, crops).astype(np.uint8, copy=False)


def build_polymnist_split(
    digits: np.ndarray,
    labels: np.ndarray,
    backgrounds: Sequence[np.ndarray],
    rng: np.random.Generator,
    distinct: bool = True,
    chunk: int = 4096,
    progress: bool = False,
    desc: str = "",
) -> dict[str, np.ndarray]:
    """Build one split from its MNIST images.

    Args:
        digits: uint8 ``[N, 28, 28]``; labels: int ``[N]``; backgrounds: ``M`` uint8 ``[H, W, 3]`` arrays.
        rng: the split's generator; first consumed by :func:`digit_permutations`, then by the crop corners
            (modality by modality).

    Returns:
        dict with ``images`` uint8 ``[N, M, 3, 28, 28]``, ``labels`` int64 ``[N]``, ``perm`` int64 ``[N, M]`` (positions
        in ``digits``) and ``crop_yx`` int32 ``[N, M, 2]``.
    """
    n, num_mod = digits.shape[0], len(backgrounds)
    perm = digit_permutations(labels, num_mod, rng, distinct=distinct)
    crop_yx = np.empty((n, num_mod, 2), dtype=np.int32)
    for m, bg in enumerate(backgrounds):
        crop_yx[:, m, 0] = rng.integers(0, bg.shape[0] - IMAGE_SIZE + 1, size=n)
        crop_yx[:, m, 1] = rng.integers(0, bg.shape[1] - IMAGE_SIZE + 1, size=n)
    images = np.empty((n, num_mod, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    starts = list(range(0, n, chunk))
    bar = progress_bar(total=n * num_mod, desc=desc or "compose", unit="img", disable=not progress)
    for m, bg in enumerate(backgrounds):
        for s in starts:
            e = min(s + chunk, n)
            images[s:e, m] = compose_modality(digits[perm[s:e, m]], bg, crop_yx[s:e, m])
            bar.update(e - s)
    bar.close()
    return {"images": images, "labels": np.asarray(labels, dtype=np.int64), "perm": perm, "crop_yx": crop_yx}


def _split_indices(num_test: int, val_size: int, seed: int) -> dict[str, np.ndarray]:
    if not 0 < val_size < num_test:
        raise DyMoInputError(f"val_size={val_size} must be in 1..{num_test - 1} (the MNIST test set has {num_test} "
                             "images)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_ASSIGN_CODE]))
    order = rng.permutation(num_test)
    return {"val": np.sort(order[:val_size]), "test": np.sort(order[val_size:])}


def build_polymnist(
    mnist: str | Path | Mapping[str, np.ndarray],
    backgrounds: str | Path | Sequence[np.ndarray],
    seed: int = 0,
    splits: Sequence[str] = ("train", "val", "test"),
    val_size: int = 3000,
    max_samples: int | None = None,
    distinct: bool = True,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Build PolyMNIST splits in memory.

    Args:
        mnist: path of the MNIST ``.npz`` or the dict returned by :func:`load_mnist_npz`.
        backgrounds: folder of the five photographs (see :data:`POLYMNIST_BACKGROUNDS`) or the RGB arrays in order.
        seed: master seed; each split has its own generator, so building one split alone gives the same bytes.
        splits: which splits to build.
        val_size: validation samples taken from the MNIST test set (rest = test).
        max_samples: keep only the first ``max_samples`` MNIST images of each split *before* building (CI-sized
            datasets; not a prefix of the full build since the permutations then run over fewer images).
        distinct: guarantee five distinct instances per sample (see module doc).

    Returns:
        ``{split: {"images", "labels", "mnist_index", "source_index", "crop_yx", "modalities", "backgrounds",
        "split", "seed"}}`` (``mnist_index``/``source_index`` index the MNIST train or test arrays).
    """
    data = load_mnist_npz(mnist) if isinstance(mnist, (str, Path)) else dict(mnist)
    if isinstance(backgrounds, (str, Path)):
        bgs, _ = load_backgrounds(backgrounds)
    else:
        bgs = [np.asarray(b, dtype=np.uint8) for b in backgrounds]
    if len(bgs) != len(POLYMNIST_BACKGROUNDS):
        raise DyMoInputError(f"expected {len(POLYMNIST_BACKGROUNDS)} backgrounds, got {len(bgs)}")
    unknown = [s for s in splits if s not in POLYMNIST_SPLITS]
    if unknown:
        raise DyMoInputError(f"unknown split(s) {unknown}; expected a subset of {list(POLYMNIST_SPLITS)}")
    if max_samples is not None and max_samples < 1:
        raise DyMoInputError(f"max_samples must be positive, got {max_samples}")
    test_parts = _split_indices(data["x_test"].shape[0], val_size, seed) if {"val", "test"} & set(splits) else {}
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in splits:
        if split == "train":
            source = np.arange(data["x_train"].shape[0])
            x, y = data["x_train"], data["y_train"]
        else:
            source = test_parts[split]
            x, y = data["x_test"], data["y_test"]
        if max_samples is not None:
            source = source[:max_samples]
        rng = np.random.default_rng(np.random.SeedSequence([seed, POLYMNIST_SPLITS[split]]))
        try:
            built = build_polymnist_split(
                x[source], y[source], bgs, rng, distinct=distinct, progress=progress, desc=f"polymnist {split}"
            )
        except DyMoInputError as e:
            raise DyMoInputError(f"split '{split}' ({source.size} MNIST images): {e}") from e
        out[split] = {
            "images": built["images"],
            "labels": built["labels"],
            "mnist_index": source[built["perm"]].astype(np.int64),
            "source_index": source.astype(np.int64),
            "crop_yx": built["crop_yx"],
            "modalities": np.array(POLYMNIST_MODALITIES),
            "backgrounds": np.array(POLYMNIST_BACKGROUNDS),
            "split": np.array(split),
            "seed": np.array(seed, dtype=np.int64),
        }
    return out



def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_polymnist_to_disk(
    mnist: str | Path,
    backgrounds: str | Path,
    out_dir: str | Path,
    seed: int = 0,
    fmt: str = "npz",
    splits: Sequence[str] = ("train", "val", "test"),
    val_size: int = 3000,
    max_samples: int | None = None,
    compress: bool = False,
    distinct: bool = True,
    preview: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build and write PolyMNIST (``fmt`` in ``npz``, ``png``, ``both``); returns the provenance record also written to
    ``{out_dir}/polymnist_info.json``."""
    if fmt not in ("npz", "png", "both"):
        raise DyMoInputError(f"format must be 'npz', 'png' or 'both', got {fmt!r}")
    start = time.perf_counter()
    mnist, backgrounds, out_dir = Path(mnist), Path(backgrounds), Path(out_dir)
    data = load_mnist_npz(mnist)
    bgs, bg_paths = load_backgrounds(backgrounds)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for split in splits:  # one split at a time keeps peak memory at one split
        built = build_polymnist(
            data, bgs, seed=seed, splits=(split,), val_size=val_size, max_samples=max_samples,
            distinct=distinct, progress=progress,
        )[split]
        sizes[split] = int(built["labels"].shape[0])
        files[split] = []
        if fmt in ("npz", "both"):
            files[split].append(str(save_polymnist_npz(built, out_dir / f"polymnist_{split}.npz", compress=compress)))
        if fmt in ("png", "both"):
            files[split].append(str(save_polymnist_png(built, out_dir, split, progress=progress)))
        if preview and split == splits[-1]:
            files.setdefault("preview", []).append(
                str(save_preview(built["images"], built["labels"], out_dir / "preview.png"))
            )
        del built
    info = {
        "dataset": "PolyMNIST",
        "seed": seed,
        "format": fmt,
        "compressed": compress,
        "distinct_instances": distinct,
        "max_samples": max_samples,
        "val_size": val_size,
        "sizes": sizes,
        "modalities": list(POLYMNIST_MODALITIES),
        "backgrounds": {m: str(p.name) for m, p in zip(POLYMNIST_MODALITIES, bg_paths)},
        "mnist": {"path": str(mnist), "sha256": _sha256(mnist)},
        "background_sha256": {p.name: _sha256(p) for p in bg_paths},
        "files": files,
        "binarisation": "digit pixel on where grey level >= 128 (x/255 > 0.5); pixel = 255 - background there",
        "split_rule": "train = MNIST train; MNIST test permuted with SeedSequence([seed, 3]): first val_size -> val, "
        "rest -> test (indices sorted)",
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (out_dir / "polymnist_info.json").write_text(json.dumps(info, indent=2))
    return info
