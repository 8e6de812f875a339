"""Weights and calibrations that do not fit: one line naming the file and the first mismatch."""

from __future__ import annotations

import pytest
import torch

from monai_dymo import SubsetCalibration, load_calibration, load_weights
from monai_dymo.networks import build_polymnist_fusion


def _fusion(dim: int = 16, modalities=("a", "b")) -> torch.nn.Module:
    return build_polymnist_fusion(modalities=list(modalities), num_classes=3, dim=dim, depth=1, num_heads=2, proj_dim=8)


def _one_line(message: str, *parts: str) -> None:
    assert "\n" not in message
    for p in parts:
        assert p in message


def test_fitting_weights_load_plain_and_nested(tmp_path):
    source, target = _fusion(), _fusion()
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"model": source.state_dict(), "optimizer": {"state": {}}}, tmp_path / "nested.pt")
    for name in ("plain.pt", "nested.pt"):
        assert load_weights(target, tmp_path / name) is target
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_weights_of_another_shape_name_the_file_and_first_parameter(tmp_path):
    path = tmp_path / "fusion_dim32.pt"
    torch.save(_fusion(dim=32).state_dict(), path)
    network = _fusion(dim=16)
    first = next(iter(network.state_dict()))  # every parameter differs in width: the first one is reported
    with pytest.raises(ValueError) as err:
        load_weights(network, path)
    _one_line(str(err.value), str(path), f"'{first}'", "in the file", "more mismatches")


def test_the_wrong_weights_file_names_what_is_missing(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    network = _fusion()
    with pytest.raises(ValueError) as err:
        load_weights(network, path)
    _one_line(str(err.value), str(path), f"'{next(iter(network.state_dict()))}'", "missing from the file")


def test_an_extra_parameter_in_the_file_is_named(tmp_path):
    state = _fusion().state_dict()
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(ValueError) as err:
        load_weights(_fusion(), tmp_path / "extra.pt")
    _one_line(str(err.value), "'extra.weight'", "the network lacks")


def test_unreadable_and_non_weight_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError) as err:
        load_weights(_fusion(), garbage)
    _one_line(str(err.value), str(garbage), "could not be read")
    calibration = tmp_path / "calibration.pt"
    torch.save({"format_version": 2, "metric": "cosine", "prototypes": torch.zeros(4, 3, 8)}, calibration)
    with pytest.raises(ValueError) as err:
        load_weights(_fusion(), calibration)
    _one_line(str(err.value), str(calibration), "not a network state_dict")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights(_fusion(), tmp_path / "nope.pt")


def _calibration(modalities, num_classes: int = 3, proj_dim: int = 8) -> SubsetCalibration:
    rows = 2 ** len(modalities)
    return SubsetCalibration(
        prototypes=torch.nn.functional.normalize(torch.randn(rows, num_classes, proj_dim), dim=-1),
        sigma=torch.ones(rows, num_classes),
        modalities=list(modalities),
    )


def test_a_calibration_that_does_not_fit_names_the_file(tmp_path):
    network = _fusion(modalities=("a", "b"))
    good = tmp_path / "good.pt"
    _calibration(("a", "b")).save(good)
    assert load_calibration(good, network=network).modalities == ("a", "b")
    for name, cal, part in (
        ("three.pt", _calibration(("a", "b", "c")), "modalities"),
        ("swapped.pt", _calibration(("b", "a")), "names and order"),
        ("classes.pt", _calibration(("a", "b"), num_classes=4), "classes"),
    ):
        cal.save(tmp_path / name)
        with pytest.raises(ValueError) as err:
            load_calibration(tmp_path / name, network=network)
        _one_line(str(err.value), str(tmp_path / name), "does not fit the network", part)
    weights = tmp_path / "fusion.pt"
    torch.save(network.state_dict(), weights)
    with pytest.raises(ValueError, match="fusion.pt"):
        load_calibration(weights, network=network)
