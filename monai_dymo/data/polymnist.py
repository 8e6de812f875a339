"""PolyMNIST: build the five-modality MNIST benchmark from an MNIST archive and five background photographs.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import Dataset

from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError
from monai_dymo.keys import DyMoKeys, Reason

__all__ = [
    "POLYMNIST_BACKGROUNDS",
    "POLYMNIST_MODALITIES",
    "POLYMNIST_SPLITS",
    "IMAGE_SIZE",
    "load_mnist_npz",
    "load_backgrounds",
    "digit_permutations",
    "compose_modality",
    "build_polymnist_split",
    "build_polymnist",
    "build_polymnist_to_disk",
    "save_polymnist_npz",
    "save_polymnist_png",
    "load_polymnist_npz",
    "polymnist_arrays",
    "save_preview",
    "load_polymnist_datalist",
    "PolyMNISTDataset",
]

#: background photographs, one per modality, in modality order ``m0..m4``
POLYMNIST_BACKGROUNDS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
#: modality names (as in the original PolyMNIST folders)
POLYMNIST_MODALITIES: tuple[str, ...] = tuple(f"m{k}" for k in range(len(POLYMNIST_BACKGROUNDS)))
#: split names and the code used to seed each split's generator
POLYMNIST_SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_SPLIT_ASSIGN_CODE = 3
IMAGE_SIZE = 28
_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
_BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_NPZ_KEYS = ("images", "labels", "modalities")
_PER_SAMPLE_KEYS = ("images", "labels", "mnist_index", "source_index", "crop_yx")
_LABEL, _PID = str(DyMoKeys.LABEL), str(DyMoKeys.PATIENT_ID)
_PRESENT, _REASONS = str(DyMoKeys.PRESENT), str(DyMoKeys.REASONS)


# ----------------------------------------------------------------------------------------------------------- inputs
def load_mnist_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate an MNIST archive (``.npz`` with ``x_train/y_train/x_test/y_test``).

    Returns a dict with ``x_*`` uint8 ``[N, 28, 28]`` and ``y_*`` int64 ``[N]`` (labels 0..9).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an npz archive, a key is missing, or an array has the wrong shape / dtype / label range.
    """
    path = Path(path)
    if not path.is_file():
        raise DyMoFileNotFoundError(
            f"MNIST archive not found: {path} (expected an .npz file with arrays {', '.join(_MNIST_KEYS)})"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zip/pickle/format errors all mean "not a usable archive"
        raise DyMoInputError(f"MNIST archive {path} could not be read as an .npz file: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DyMoInputError(
            f"MNIST archive {path} is a single .npy array, expected an .npz archive with keys {', '.join(_MNIST_KEYS)}"
        )
    with archive:
        missing = [k for k in _MNIST_KEYS if k not in archive.files]
        if missing:
            raise DyMoInputError(
                f"MNIST archive {path} lacks key(s) {', '.join(missing)}; expected {', '.join(_MNIST_KEYS)}, "
                f"found {', '.join(archive.files) or 'none'}"
            )
        try:
            out = {k: archive[k] for k in _MNIST_KEYS}
        except Exception as e:
            raise DyMoInputError(f"MNIST archive {path}: could not load arrays: {e}") from e
    for part in ("train", "test"):
        x, y = out[f"x_{part}"], out[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or x.shape[0] == 0:
            raise DyMoInputError(
                f"MNIST archive {path}: x_{part} has shape {x.shape}, "
                f"expected (N, {IMAGE_SIZE}, {IMAGE_SIZE}) with N > 0"
            )
        if x.dtype != np.uint8:
            raise DyMoInputError(f"MNIST archive {path}: x_{part} has dtype {x.dtype}, expected uint8 (grey levels "
                                 "0..255)")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DyMoInputError(
                f"MNIST archive {path}: y_{part} has shape {y.shape}, expected ({x.shape[0]},) to match x_{part}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DyMoInputError(f"MNIST archive {path}: y_{part} has dtype {y.dtype}, expected an integer dtype")
        if y.min() < 0 or y.max() > 9:
            raise DyMoInputError(
                f"MNIST archive {path}: y_{part} has labels in [{y.min()}, {y.max()}], expected digits 0..9"
            )
        out[f"y_{part}"] = y.astype(np.int64)
    return out


def _find_background(directory: Path, name: str) -> Path:
    for suffix in _BACKGROUND_SUFFIXES:
        for candidate in (directory / f"{name}{suffix}", directory / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise DyMoFileNotFoundError(
        f"PolyMNIST background '{name}' not found in {directory}: expected {directory / (name + '.jpg')} "
        f"(or .jpeg/.png/.tif/.bmp)"
    )


def load_backgrounds(
    directory: str | Path, names: Sequence[str] = POLYMNIST_BACKGROUNDS
) -> tuple[list[np.ndarray], list[Path]]:
    """Read the background photographs ``{directory}/{name}.jpg`` as RGB uint8 arrays ``[H, W, 3]``.

    Returns:
        (images, paths), both in the order of ``names`` (modality order).

    Raises:
        FileNotFoundError: the folder or one of the files is missing.
        ValueError: a file cannot be decoded as an image, or is smaller than 28x28.
    """
    from PIL import Image, UnidentifiedImageError

    directory = Path(directory)
    if not directory.is_dir():
        raise DyMoFileNotFoundError(
            f"PolyMNIST background folder not found: {directory} "
            f"(expected a folder holding {', '.join(n + '.jpg' for n in names)})"
        )
    images, paths = [], []
    for name in names:
        path = _find_background(directory, name)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DyMoInputError(f"PolyMNIST background {path} is not a readable image: {e}") from e
        if arr.shape[0] < IMAGE_SIZE or arr.shape[1] < IMAGE_SIZE:
            raise DyMoInputError(
                f"PolyMNIST background {path} is {arr.shape[1]}x{arr.shape[0]} pixels; "
                f"expected at least {IMAGE_SIZE}x{IMAGE_SIZE}"
            )
        images.append(np.ascontiguousarray(arr))
        paths.append(path)
    return images, paths


# ----------------------------------------------------------------------------------------------------- construction
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
    bar = _tqdm(total=n * num_mod, desc=desc or "compose", unit="img", disable=not progress)
    for m, bg in enumerate(backgrounds):
        for s in starts:
            e = min(s + chunk, n)
            images[s:e, m] = compose_modality(digits[perm[s:e, m]], bg, crop_yx[s:e, m])
            bar.update(e - s)
    bar.close()
    return {"images": images, "labels": np.asarray(labels, dtype=np.int64), "perm": perm, "crop_yx": crop_yx}


def _tqdm(**kwargs: Any):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


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


# ----------------------------------------------------------------------------------------------------------- output
def save_polymnist_npz(split_data: Mapping[str, np.ndarray], path: str | Path, compress: bool = False) -> Path:
    """Write one split (as returned by :func:`build_polymnist`) to ``path`` (uncompressed unless ``compress``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compress else np.savez)(path, **dict(split_data))
    return path


def save_polymnist_png(
    split_data: Mapping[str, np.ndarray], root: str | Path, split: str, progress: bool = False
) -> Path:
    """Write one split as ``{root}/{split}/m{k}/{i}.{label}.png`` (the original PolyMNIST layout, RGB PNG)."""
    from PIL import Image

    images, labels = split_data["images"], split_data["labels"]
    names = [str(n) for n in split_data.get("modalities", POLYMNIST_MODALITIES)]
    base = Path(root) / split
    for name in names:
        (base / name).mkdir(parents=True, exist_ok=True)
    bar = _tqdm(total=images.shape[0] * len(names), desc=f"png {split}", unit="img", disable=not progress)
    for i in range(images.shape[0]):
        for m, name in enumerate(names):
            Image.fromarray(np.ascontiguousarray(images[i, m].transpose(1, 2, 0))).save(
                base / name / f"{i}.{int(labels[i])}.png"
            )
        bar.update(len(names))
    bar.close()
    return base


def save_preview(
    images: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    num_samples: int = 8,
    scale: int = 4,
    modalities: Sequence[str] = POLYMNIST_MODALITIES,
) -> Path:
    """Save a PNG grid: one row per sample (first ``num_samples``), one column per modality, label on the left.

    ``images``: uint8 ``[N, M, 3, 28, 28]``.
    """
    from PIL import Image, ImageDraw

    n = min(num_samples, images.shape[0])
    num_mod = images.shape[1]
    cell, pad, margin, header = IMAGE_SIZE * scale, 4, 28, 16
    width = margin + num_mod * (cell + pad)
    height = header + n * (cell + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for m in range(num_mod):
        draw.text((margin + m * (cell + pad) + cell // 2 - 6, 2), str(modalities[m]), fill=(0, 0, 0))
    for i in range(n):
        y0 = header + i * (cell + pad)
        draw.text((6, y0 + cell // 2 - 6), str(int(labels[i])), fill=(0, 0, 0))
        for m in range(num_mod):
            tile = Image.fromarray(np.ascontiguousarray(images[i, m].transpose(1, 2, 0))).resize(
                (cell, cell), Image.NEAREST
            )
            canvas.paste(tile, (margin + m * (cell + pad), y0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


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


# ------------------------------------------------------------------------------------------------------------ input
def load_polymnist_npz(path: str | Path, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """Load a split written by :func:`save_polymnist_npz` and validate it.

    Returns all arrays of the file (``images`` uint8 ``[N, M, 3, 28, 28]``, ``labels`` int64 ``[N]``,
    ``modalities``, ...), per-sample arrays truncated to the first ``max_samples`` samples if given.
    """
    path = Path(path)
    if not path.is_file():
        raise DyMoFileNotFoundError(
            f"PolyMNIST split file not found: {path} (build it with `python -m monai_dymo.data polymnist`)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:
        raise DyMoInputError(f"PolyMNIST file {path} could not be read as an .npz archive: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DyMoInputError(f"PolyMNIST file {path} is a single .npy array, expected an .npz archive")
    with archive:
        missing = [k for k in _NPZ_KEYS if k not in archive.files]
        if missing:
            raise DyMoInputError(
                f"PolyMNIST file {path} lacks key(s) {', '.join(missing)}; expected {', '.join(_NPZ_KEYS)}"
            )
        data = {k: archive[k] for k in archive.files}
    images, labels, names = data["images"], data["labels"], data["modalities"]
    if images.ndim != 5 or images.shape[2:] != (3, IMAGE_SIZE, IMAGE_SIZE) or images.dtype != np.uint8:
        raise DyMoInputError(
            f"PolyMNIST file {path}: images has shape {images.shape} dtype {images.dtype}, "
            f"expected uint8 [N, M, 3, {IMAGE_SIZE}, {IMAGE_SIZE}]"
        )
    if labels.shape != (images.shape[0],):
        raise DyMoInputError(f"PolyMNIST file {path}: labels has shape {labels.shape}, expected ({images.shape[0]},)")
    if names.shape != (images.shape[1],):
        raise DyMoInputError(f"PolyMNIST file {path}: modalities has shape {names.shape}, expected "
                             f"({images.shape[1]},)")
    if max_samples is not None:
        data = {k: (v[:max_samples] if k in _PER_SAMPLE_KEYS else v) for k, v in data.items()}
    data["labels"] = data["labels"].astype(np.int64)
    return data


def polymnist_arrays(
    path: str | Path, max_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(images uint8 [N, M, 3, 28, 28], labels int64 [N], modality names)`` of a split file, for fast batch loops."""
    data = load_polymnist_npz(path, max_samples=max_samples)
    return data["images"], data["labels"], tuple(str(n) for n in data["modalities"])


class _PolyMNISTItems(Sequence):
    """Lazy sequence of sample dicts (uint8 storage, float conversion per item)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        positions: Sequence[int],
        names: Sequence[str],
        split: str,
        present: np.ndarray | None,
        reason_detail: str,
        missing_value: float | None,
    ) -> None:
        self.images, self.labels, self.positions, self.names = images, labels, list(positions), tuple(names)
        self.split, self.present, self.reason_detail, self.missing_value = split, present, reason_detail, missing_value

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        item: dict[str, Any] = {}
        for m, name in zip(self.positions, self.names):
            item[name] = torch.from_numpy(self.images[i, m].astype(np.float32) / 255.0)
        item[_LABEL] = int(self.labels[i])
        item["index"] = i
        item[_PID] = f"{self.split}-{i}"
        if self.present is not None:
            row = self.present[i]
            reasons = {}
            for k, name in enumerate(self.names):
                if row[k]:
                    reasons[name] = str(Reason.OBSERVED)
                else:
                    reasons[name] = f"{Reason.SIMULATED}: {self.reason_detail} row {i}"
                    if self.missing_value is not None:
                        item[name] = torch.full_like(item[name], float(self.missing_value))
            item[_PRESENT] = torch.as_tensor(row, dtype=torch.bool)
            item[_REASONS] = reasons
        return item


class PolyMNISTDataset(Dataset):
    """MONAI dataset over a PolyMNIST split file; items are built lazily from the uint8 array.

    Each item: ``{name: FloatTensor[3, 28, 28] in [0, 1] for each modality, "label": int, "index": int,
    "patient_id": "{split}-{index}"}``; with ``pattern_csv`` also ``"present"``: ``BoolTensor[M]`` (modality order of
    ``modalities``) and ``"modality_reasons"`` (``"observed"`` / ``"simulated missing: <file> row i"``), and missing
    modalities are replaced by ``missing_value`` (0 by default; ``None`` keeps the true image, e.g. for oracles).

    Args:
        npz_path: a ``polymnist_{split}.npz`` file.
        modalities: names to load (default: all in the file's order).
        transform: MONAI transform(s) applied to each item dict.
        pattern_csv: missing-pattern file (see :mod:`monai_dymo.data.missing_patterns`); must have one row per sample
            (or at least ``max_samples`` rows when ``max_samples`` is given, of which the first are used).
        max_samples: keep the first ``max_samples`` samples (CI-sized runs).
        missing_value: fill value of missing modalities, or ``None``.
    """

    def __init__(
        self,
        npz_path: str | Path,
        modalities: Sequence[str] | None = None,
        transform: Callable | Sequence[Callable] | None = None,
        pattern_csv: str | Path | None = None,
        max_samples: int | None = None,
        missing_value: float | None = 0.0,
    ) -> None:
        data = load_polymnist_npz(npz_path, max_samples=max_samples)
        all_names = tuple(str(n) for n in data["modalities"])
        names = tuple(modalities) if modalities is not None else all_names
        unknown = [n for n in names if n not in all_names]
        if unknown:
            raise DyMoInputError(
                f"PolyMNIST file {npz_path}: unknown modality name(s) {unknown}; file has {list(all_names)}"
            )
        self.modalities = names
        self.split = str(data["split"]) if "split" in data else Path(npz_path).stem.replace("polymnist_", "")
        present = None
        if pattern_csv is not None:
            from monai_dymo.data.missing_patterns import read_pattern_csv

            present = read_pattern_csv(pattern_csv, names)
            n = data["labels"].shape[0]
            if (max_samples is None and present.shape[0] != n) or present.shape[0] < n:
                raise DyMoInputError(
                    f"missing-pattern file {pattern_csv} has {present.shape[0]} rows, expected {n} "
                    f"(one per sample of {npz_path})"
                )
            present = present[:n]
        items = _PolyMNISTItems(
            data["images"],
            data["labels"],
            [all_names.index(n) for n in names],
            names,
            self.split,
            present,
            f"pattern {Path(pattern_csv).name}" if pattern_csv is not None else "",
            missing_value,
        )
        self.labels = data["labels"]
        self.present = present
        super().__init__(data=items, transform=transform)


def load_polymnist_datalist(
    root: str | Path, split: str, modalities: Sequence[str] = POLYMNIST_MODALITIES, max_samples: int | None = None
) -> list[dict[str, Any]]:
    """Datalist for the PNG layout ``{root}/{split}/m{k}/{i}.{label}.png`` (for MONAI ``LoadImaged``).

    Returns ``[{name: path, ..., "label": int, "index": i, "patient_id": "{split}-{i}"}]`` sorted by ``i``.
    Raises ``FileNotFoundError`` / ``ValueError`` when a folder is missing or the modalities' files disagree.
    """
    base = Path(root) / split
    by_mod: dict[str, dict[int, tuple[int, Path]]] = {}
    for name in modalities:
        folder = base / name
        if not folder.is_dir():
            raise DyMoFileNotFoundError(f"PolyMNIST PNG folder not found: {folder}")
        entries: dict[int, tuple[int, Path]] = {}
        for p in folder.glob("*.png"):
            parts = p.stem.split(".")
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1].isdigit():
                raise DyMoInputError(f"PolyMNIST PNG {p}: name must be '{{index}}.{{label}}.png'")
            entries[int(parts[0])] = (int(parts[1]), p)
        by_mod[name] = entries
    ref_name = modalities[0]
    ref = by_mod[ref_name]
    indices = sorted(ref)
    if indices != list(range(len(indices))):
        raise DyMoInputError(f"PolyMNIST PNG folder {base / ref_name}: indices are not 0..{len(indices) - 1}")
    out = []
    for i in indices[: max_samples if max_samples is not None else len(indices)]:
        label = ref[i][0]
        item: dict[str, Any] = {}
        for name in modalities:
            if i not in by_mod[name]:
                raise DyMoInputError(f"PolyMNIST PNG: sample {i} missing in {base / name}")
            if by_mod[name][i][0] != label:
                raise DyMoInputError(
                    f"PolyMNIST PNG: sample {i} has label {by_mod[name][i][0]} in {base / name}, "
                    f"{label} in {base / ref_name}"
                )
            item[name] = str(by_mod[name][i][1])
        item.update({_LABEL: label, "index": i, _PID: f"{split}-{i}"})
        out.append(item)
    return out
