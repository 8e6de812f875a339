"""PolyMNIST builder and dataset: construction rule, determinism, splits, input validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_dymo.data.__main__ import main as cli_main
from monai_dymo.data.missing_patterns import generate_missing_pattern, write_pattern_csv
from monai_dymo.data.polymnist import (
    POLYMNIST_BACKGROUNDS,
    POLYMNIST_MODALITIES,
    PolyMNISTDataset,
    build_polymnist,
    build_polymnist_to_disk,
    load_backgrounds,
    load_mnist_npz,
    load_polymnist_datalist,
    load_polymnist_npz,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_MNIST = DATA / "mnist" / "mnist.npz"
REAL_BACKGROUNDS = DATA / "polymnist_backgrounds"

# background sizes (H, W) of the fake photographs: all different so a crop identifies its background
FAKE_BG_SHAPES = [(40, 36), (33, 45), (30, 30), (50, 29), (37, 41)]


def _fake_mnist(rng: np.random.Generator, per_digit_train: int = 8, per_digit_test: int = 40) -> dict[str, np.ndarray]:
    """Random grey-level 'digits' (uint8, every value 0..255 occurs); train labels cycle 0..9, test labels shuffled."""
    out = {}
    for part, per in (("train", per_digit_train), ("test", per_digit_test)):
        y = np.tile(np.arange(10), per) if part == "train" else rng.permutation(np.repeat(np.arange(10), per))
        y = y.astype(np.uint8)
        x = rng.integers(0, 256, size=(y.size, 28, 28), dtype=np.uint8)
        out[f"x_{part}"], out[f"y_{part}"] = x, y
    return out


@pytest.fixture(scope="module")
def fake_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_polymnist")
    rng = np.random.default_rng(1234)
    mnist = _fake_mnist(rng)
    np.savez(root / "mnist.npz", **mnist)
    bg_dir = root / "backgrounds"
    bg_dir.mkdir()
    bgs = []
    for name, (h, w) in zip(POLYMNIST_BACKGROUNDS, FAKE_BG_SHAPES):
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(bg_dir / f"{name}.png")  # lossless, so pixels can be compared exactly
        bgs.append(arr)
    return {"root": root, "mnist_path": root / "mnist.npz", "bg_dir": bg_dir, "mnist": mnist, "bgs": bgs}


def _find_window(image: np.ndarray, background: np.ndarray) -> list[tuple[int, int]]:
    """All top-left corners where every pixel of ``image`` [3,28,28] equals the background or its inverse."""
    win = np.lib.stride_tricks.sliding_window_view(background, (28, 28), axis=(0, 1))  # [H', W', 3, 28, 28]
    ok = ((image[None, None] == win) | (image[None, None] == 255 - win)).all(axis=(2, 3, 4))
    return [tuple(map(int, p)) for p in np.argwhere(ok)]


def test_fake_build_follows_construction_rule(fake_inputs):
    """Recover each modality's crop and digit from the pixels alone and check label, background and distinctness."""
    mnist, bgs = fake_inputs["mnist"], fake_inputs["bgs"]
    out = build_polymnist(fake_inputs["mnist_path"], fake_inputs["bg_dir"], seed=3, val_size=200)
    # digit lookup by binarised mask (x / 255 > 0.5)
    lookup = {}
    for part in ("train", "test"):
        for j, x in enumerate(mnist[f"x_{part}"]):
            lookup[(part, (x >= 128).tobytes())] = j
    for split, part in (("train", "train"), ("val", "test"), ("test", "test")):
        d = out[split]
        images, labels = d["images"], d["labels"]
        assert images.dtype == np.uint8 and images.shape[1:] == (5, 3, 28, 28)
        assert labels.dtype == np.int64
        assert [str(n) for n in d["modalities"]] == list(POLYMNIST_MODALITIES)
        for i in range(0, images.shape[0], 7):
            used = []
            for m in range(5):
                img = images[i, m]
                corners = _find_window(img, bgs[m])
                assert corners, f"{split} sample {i} modality {m} is not a crop of background {m}"
                # no other background explains this image (crops come from the right photograph)
                for other in range(5):
                    if other != m:
                        assert not _find_window(img, bgs[other])
                y0, x0 = corners[0]
                assert (y0, x0) == tuple(d["crop_yx"][i, m])
                crop = bgs[m][y0 : y0 + 28, x0 : x0 + 28].transpose(2, 0, 1)
                on = (img != crop).any(axis=0)
                np.testing.assert_array_equal(img[:, on], 255 - crop[:, on])
                j = lookup.get((part, on.tobytes()))
                assert j is not None, f"{split} sample {i} modality {m}: pasted mask is no binarised MNIST digit"
                assert mnist[f"y_{part}"][j] == labels[i]
                assert d["mnist_index"][i, m] == j
                used.append(j)
            assert len(set(used)) == 5, f"{split} sample {i} repeats a handwritten instance: {used}"


def test_fake_build_permutations_and_splits(fake_inputs):
    mnist = fake_inputs["mnist"]
    out = build_polymnist(fake_inputs["mnist_path"], fake_inputs["bg_dir"], seed=0, val_size=200)
    n_train, n_test = mnist["y_train"].size, mnist["y_test"].size
    assert out["train"]["labels"].shape == (n_train,)
    assert out["val"]["labels"].shape == (200,) and out["test"]["labels"].shape == (n_test - 200,)
    np.testing.assert_array_equal(out["train"]["source_index"], np.arange(n_train))
    val_src, test_src = out["val"]["source_index"], out["test"]["source_index"]
    assert not set(val_src) & set(test_src)
    np.testing.assert_array_equal(np.sort(np.concatenate([val_src, test_src])), np.arange(n_test))
    for split, y in (("train", mnist["y_train"]), ("val", mnist["y_test"]), ("test", mnist["y_test"])):
        d = out[split]
        np.testing.assert_array_equal(d["labels"], y[d["source_index"]])
        for m in range(5):
            # each modality uses every MNIST image of its split exactly once, with the sample's label
            np.testing.assert_array_equal(np.sort(d["mnist_index"][:, m]), np.sort(d["source_index"]))
            np.testing.assert_array_equal(y[d["mnist_index"][:, m]], d["labels"])
        # independent permutations: modalities disagree on most samples
        assert (d["mnist_index"][:, 0] != d["mnist_index"][:, 1]).mean() > 0.5


def test_fake_build_deterministic(fake_inputs):
    args = (fake_inputs["mnist_path"], fake_inputs["bg_dir"])
    a = build_polymnist(*args, seed=5, val_size=200)
    b = build_polymnist(*args, seed=5, val_size=200)
    c = build_polymnist(*args, seed=6, val_size=200)
    for split in ("train", "val", "test"):
        assert a[split]["images"].tobytes() == b[split]["images"].tobytes()
        assert a[split]["crop_yx"].tobytes() == b[split]["crop_yx"].tobytes()
        assert a[split]["images"].tobytes() != c[split]["images"].tobytes()
    # each split has its own generator: building one split alone gives the same bytes
    only_test = build_polymnist(*args, seed=5, val_size=200, splits=("test",))
    assert only_test["test"]["images"].tobytes() == a["test"]["images"].tobytes()


def test_max_samples_and_too_few_instances(fake_inputs):
    out = build_polymnist(fake_inputs["mnist_path"], fake_inputs["bg_dir"], seed=0, val_size=200,
                          splits=("train",), max_samples=60)
    assert out["train"]["labels"].shape == (60,)
    assert out["train"]["mnist_index"].max() < 60
    # the first 10 train images (one per digit) cannot give 5 distinct instances of a digit
    with pytest.raises(ValueError, match="split 'train'.*digit 0 has only 1 image"):
        build_polymnist(fake_inputs["mnist_path"], fake_inputs["bg_dir"], splits=("train",), max_samples=10)


def test_disk_outputs_and_dataset(fake_inputs, tmp_path):
    out_dir = tmp_path / "pm"
    info = build_polymnist_to_disk(fake_inputs["mnist_path"], fake_inputs["bg_dir"], out_dir, seed=1, fmt="both",
                                   val_size=200, progress=False)
    assert info["sizes"] == {"train": 80, "val": 200, "test": 200}
    assert (out_dir / "polymnist_info.json").is_file() and (out_dir / "preview.png").is_file()
    data = load_polymnist_npz(out_dir / "polymnist_test.npz")
    assert data["images"].shape == (200, 5, 3, 28, 28) and str(data["split"]) == "test"

    # PNG layout {split}/m{k}/{i}.{label}.png holds the same pixels
    dl = load_polymnist_datalist(out_dir, "test")
    assert len(dl) == 200 and dl[7]["label"] == int(data["labels"][7])
    png = np.asarray(Image.open(dl[7]["m3"]))
    np.testing.assert_array_equal(png, data["images"][7, 3].transpose(1, 2, 0))

    # dataset without pattern: float [3, 28, 28] in [0, 1], lazily converted
    ds = PolyMNISTDataset(out_dir / "polymnist_test.npz")
    item = ds[7]
    assert set(POLYMNIST_MODALITIES) <= set(item)
    assert item["m2"].dtype == torch.float32 and item["m2"].shape == (3, 28, 28)
    torch.testing.assert_close(item["m2"] * 255, torch.from_numpy(data["images"][7, 2]).float())
    assert item["label"] == int(data["labels"][7]) and item["index"] == 7 and item["patient_id"] == "test-7"
    assert "present" not in item

    # with a pattern: present mask, reasons, zeroed missing modalities, subset of modalities
    pattern = generate_missing_pattern(200, 5, 0.6, seed=0)
    csv_path = write_pattern_csv(tmp_path / "p.csv", pattern, POLYMNIST_MODALITIES)
    names = ("m4", "m1", "m0")
    ds = PolyMNISTDataset(out_dir / "polymnist_test.npz", modalities=names, pattern_csv=csv_path, max_samples=50)
    assert len(ds) == 50
    cols = [4, 1, 0]
    for i in range(50):
        item = ds[i]
        assert set(item) >= {*names, "present", "modality_reasons"} and "m2" not in item
        assert item["present"].tolist() == pattern[i, cols].tolist()
        for k, name in enumerate(names):
            if pattern[i, cols[k]]:
                assert item["modality_reasons"][name] == "observed"
                torch.testing.assert_close(item[name] * 255, torch.from_numpy(data["images"][i, cols[k]]).float())
            else:
                assert item["modality_reasons"][name].startswith("simulated missing")
                assert float(item[name].abs().sum()) == 0.0
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["m4"].shape == (4, 3, 28, 28) and batch["present"].shape == (4, 3)
    # a pattern for another number of samples is refused when the whole split is used
    with pytest.raises(ValueError, match="p.csv.*rows"):
        PolyMNISTDataset(out_dir / "polymnist_val.npz", pattern_csv=write_pattern_csv(
            tmp_path / "p.csv", generate_missing_pattern(150, 5, 0.2, 0), POLYMNIST_MODALITIES))
    # the bundle's pattern path at a rate outside [0, 1]: the error says so instead of "file not found"
    with pytest.raises(ValueError, match=r"missing rate 1\.5 is out of \[0, 1\]"):
        PolyMNISTDataset(out_dir / "polymnist_test.npz", pattern_csv=tmp_path / "missing_rate1.5_seed0.csv")
    np.savez(tmp_path / "bad.npz", images=data["images"], labels=data["labels"])
    with pytest.raises(ValueError, match="bad.npz lacks key.*modalities"):
        PolyMNISTDataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "bad2.npz", images=data["images"][:, :, 0], labels=data["labels"], modalities=data["modalities"])
    with pytest.raises(ValueError, match=r"bad2.npz: images has shape \(200, 5, 28, 28\)"):
        load_polymnist_npz(tmp_path / "bad2.npz")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        PolyMNISTDataset(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="unknown modality"):
        PolyMNISTDataset(out_dir / "polymnist_test.npz", modalities=["m9"])


def test_cli_builds_and_reports_errors(fake_inputs, tmp_path, capsys):
    rc = cli_main(["polymnist", "--mnist", str(fake_inputs["mnist_path"]), "--backgrounds", str(fake_inputs["bg_dir"]),
                   "--out", str(tmp_path / "o"), "--val-size", "200", "--splits", "val", "--quiet", "--no-preview"])
    assert rc == 0 and (tmp_path / "o" / "polymnist_val.npz").is_file()
    assert not (tmp_path / "o" / "polymnist_train.npz").exists()
    rc = cli_main(["polymnist", "--mnist", str(tmp_path / "nope.npz"), "--backgrounds", str(fake_inputs["bg_dir"]),
                   "--out", str(tmp_path / "o2")])
    assert rc == 2 and "nope.npz" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- bad inputs
def test_bad_mnist_archives(fake_inputs, tmp_path):
    good = fake_inputs["mnist"]
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_mnist_npz(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="text.npz"):
        load_mnist_npz(text)
    single = tmp_path / "single.npy"
    np.save(single, good["x_train"])
    with pytest.raises(ValueError, match="single.npy.*npz"):
        load_mnist_npz(single)
    cases = {
        "nokey": ({k: v for k, v in good.items() if k != "y_test"}, "y_test"),
        "shape": ({**good, "x_train": good["x_train"][:, :27]}, r"x_train has shape .*expected \(N, 28, 28\)"),
        "dtype": ({**good, "x_test": good["x_test"].astype(np.float32)}, "x_test has dtype float32, expected uint8"),
        "len": ({**good, "y_train": good["y_train"][:-1]}, "y_train has shape"),
        "labels": ({**good, "y_test": good["y_test"] + 5}, "y_test has labels"),
    }
    for name, (arrays, msg) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=f"{name}.npz.*{msg}"):
            load_mnist_npz(path)
    # the builder forwards the same errors
    with pytest.raises(ValueError, match="nokey.npz"):
        build_polymnist(tmp_path / "nokey.npz", fake_inputs["bg_dir"])


def test_bad_backgrounds(fake_inputs, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        load_backgrounds(tmp_path / "no_such_dir")
    src = fake_inputs["bg_dir"]
    d = tmp_path / "bg"
    d.mkdir()
    for name in POLYMNIST_BACKGROUNDS[:-1]:
        (d / f"{name}.png").write_bytes((src / f"{name}.png").read_bytes())
    with pytest.raises(FileNotFoundError, match="hubble_deep_field.jpg"):
        load_backgrounds(d)
    (d / "hubble_deep_field.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match="hubble_deep_field.jpg.*not a readable image"):
        load_backgrounds(d)
    (d / "hubble_deep_field.jpg").unlink()
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(d / "hubble_deep_field.png")
    with pytest.raises(ValueError, match=r"hubble_deep_field.png is 40x20 pixels; expected at least 28x28"):
        load_backgrounds(d)
    with pytest.raises(ValueError, match="hubble_deep_field.png"):
        build_polymnist(fake_inputs["mnist_path"], d)


# --------------------------------------------------------------------------------------------------- real data
def test_real_polymnist_small():
    if not REAL_MNIST.is_file() or not REAL_BACKGROUNDS.is_dir():
        pytest.skip(f"real MNIST / backgrounds not found at {REAL_MNIST} / {REAL_BACKGROUNDS}")
    mnist = load_mnist_npz(REAL_MNIST)
    bgs, _ = load_backgrounds(REAL_BACKGROUNDS)
    out = build_polymnist(mnist, bgs, seed=0, splits=("val", "test"))
    assert out["val"]["labels"].shape == (3000,) and out["test"]["labels"].shape == (7000,)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([out["val"]["source_index"], out["test"]["source_index"]])), np.arange(10000)
    )
    train = build_polymnist(mnist, bgs, seed=0, splits=("train",), max_samples=200)["train"]
    assert train["labels"].shape == (200,)
    for d, x, y in ((out["test"], mnist["x_test"], mnist["y_test"]), (train, mnist["x_train"], mnist["y_train"])):
        for i in range(0, 200, 3):
            idx = d["mnist_index"][i]
            assert len(set(idx.tolist())) == 5
            assert (y[idx] == d["labels"][i]).all()
            for m in range(5):
                y0, x0 = d["crop_yx"][i, m]
                crop = bgs[m][y0 : y0 + 28, x0 : x0 + 28].transpose(2, 0, 1)
                on = x[idx[m]] >= 128
                assert on.any()
                np.testing.assert_array_equal(d["images"][i, m][:, ~on], crop[:, ~on])
                np.testing.assert_array_equal(d["images"][i, m][:, on], 255 - crop[:, on])
            # five different handwritings: the binarised strokes differ pairwise
            masks = [(x[j] >= 128).tobytes() for j in idx]
            assert len(set(masks)) == 5
    again = build_polymnist(mnist, bgs, seed=0, splits=("train",), max_samples=200)["train"]
    assert again["images"].tobytes() == train["images"].tobytes()
