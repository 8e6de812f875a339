"""PolyMNIST files: the MNIST archive and background photographs it is built from, and the split files it is
written to (``polymnist_{split}.npz``, PNG folders ``{split}/m{k}/{i}.{label}.png``, ``preview.png``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = [
    "POLYMNIST_BACKGROUNDS",
    "POLYMNIST_MODALITIES",
    "IMAGE_SIZE",
    "load_mnist_npz",
    "load_backgrounds",
    "save_polymnist_npz",
    "save_polymnist_png",
    "save_preview",
    "load_polymnist_npz",
    "polymnist_arrays",
    "progress_bar",
]

#: background photographs, one per modality, in modality order ``m0..m4``
POLYMNIST_BACKGROUNDS: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
#: modality names (as in the original PolyMNIST folders)
POLYMNIST_MODALITIES: tuple[str, ...] = tuple(f"m{k}" for k in range(len(POLYMNIST_BACKGROUNDS)))
IMAGE_SIZE = 28
_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
_BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
_NPZ_KEYS = ("images", "labels", "modalities")
_PER_SAMPLE_KEYS = ("images", "labels", "mnist_index", "source_index", "crop_yx")


def progress_bar(**kwargs: Any) -> Any:
    """A ``tqdm`` progress bar (imported on first use)."""
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def _read_npz(path: Path, what: str, hint: str, keys: Sequence[str], every_array: bool) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` archive ``path``: ``keys``, which it must hold, or with ``every_array`` all of them.

    ``what`` names the file in errors, ``hint`` says what was expected where it is not found.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an npz archive, a key is missing, or its arrays cannot be read.
    """
    if not path.is_file():
        raise DyMoFileNotFoundError(f"{what} not found: {path} ({hint})")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # zip/pickle/format errors all mean "not a usable archive"
        raise DyMoInputError(f"{what} {path} could not be read as an .npz archive: {e}") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DyMoInputError(
            f"{what} {path} is a single .npy array, expected an .npz archive with keys {', '.join(keys)}"
        )
    with archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise DyMoInputError(
                f"{what} {path} lacks key(s) {', '.join(missing)}; expected {', '.join(keys)}, "
                f"found {', '.join(archive.files) or 'none'}"
            )
        try:
            return {k: archive[k] for k in (archive.files if every_array else keys)}
        except Exception as e:
            raise DyMoInputError(f"{what} {path}: could not load arrays: {e}") from e


# ----------------------------------------------------------------------------------------------------------- inputs
def load_mnist_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate an MNIST archive (``.npz`` with ``x_train/y_train/x_test/y_test``).

    Returns a dict with ``x_*`` uint8 ``[N, 28, 28]`` and ``y_*`` int64 ``[N]`` (labels 0..9).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an npz archive, a key is missing, or an array has the wrong shape / dtype / label range.
    """
    path = Path(path)
    out = _read_npz(
        path, "MNIST archive", f"expected an .npz file with arrays {', '.join(_MNIST_KEYS)}", _MNIST_KEYS, False
    )
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


# ---------------------------------------------------------------------------------------------------------- writing
def save_polymnist_npz(split_data: Mapping[str, np.ndarray], path: str | Path, compress: bool = False) -> Path:
    """Write one split (as returned by :func:`~monai_dymo.data.polymnist_build.build_polymnist`) to ``path``
    (uncompressed unless ``compress``)."""
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
    bar = progress_bar(total=images.shape[0] * len(names), desc=f"png {split}", unit="img", disable=not progress)
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


# ---------------------------------------------------------------------------------------------------------- reading
def load_polymnist_npz(path: str | Path, max_samples: int | None = None) -> dict[str, np.ndarray]:
    """Load a split written by :func:`save_polymnist_npz` and validate it.

    Returns all arrays of the file (``images`` uint8 ``[N, M, 3, 28, 28]``, ``labels`` int64 ``[N]``,
    ``modalities``, ...), per-sample arrays truncated to the first ``max_samples`` samples if given.
    """
    path = Path(path)
    data = _read_npz(path, "PolyMNIST file", "build it with `python -m monai_dymo.data polymnist`", _NPZ_KEYS, True)
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

