"""Loading shipped files into a model: network weights and calibrations, with one-line errors naming the file.

``torch.nn.Module.load_state_dict`` reports weights of another shape as a long list of ``size mismatch`` lines inside
a traceback; :func:`load_weights` checks the file against the network first and raises one short
:class:`~monai_dymo.errors.DyMoInputError` (a ``ValueError``) that names the file and the first parameter that does
not fit. :func:`load_calibration` does the same for a calibration file and the network it is meant for. The bundles
load their files through these two functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError

__all__ = ["load_weights", "load_calibration", "weights_mismatches"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def _shape(t: Any) -> tuple[int, ...] | str:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def weights_mismatches(network: torch.nn.Module, state: Mapping[str, Any]) -> list[str]:
    """Every way ``state`` does not fit ``network.state_dict()``, the network's parameters first, in its order."""
    expected = network.state_dict()
    problems: list[str] = []
    for name, t in expected.items():
        if name not in state:
            problems.append(f"parameter '{name}' {tuple(t.shape)} is missing from the file")
        elif not isinstance(state[name], torch.Tensor) or tuple(state[name].shape) != tuple(t.shape):
            problems.append(
                f"parameter '{name}' has shape {_shape(state[name])} in the file, {tuple(t.shape)} in the network"
            )
    problems.extend(f"the file has a parameter '{k}' that the network lacks" for k in state if k not in expected)
    return problems


def load_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    map_location: torch.device | str | None = "cpu",
    key: str | None = None,
) -> torch.nn.Module:
    """Load a ``state_dict`` file into ``network`` (in place) and return the network.

    Args:
        network: the module to load into.
        path: a file written by ``torch.save(network.state_dict())`` or MONAI's ``CheckpointSaver`` (a single saved
            object is stored flat; a checkpoint of several objects is read under ``key``, default ``"model"``).
        map_location: as in ``torch.load``.
        key: entry of a nested checkpoint holding the network's weights.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: one line naming the file: not a weights file, or the first parameter that is missing, extra or of
            another shape (and how many more there are).
    """
    file = os.fspath(path)
    if not os.path.isfile(file):
        raise DyMoFileNotFoundError(f"weights file not found: {file}")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors of every kind: report the file, not the unpickler's internals
        raise DyMoInputError(f"weights {file} could not be read as a PyTorch file ({_first_line(e)}).") from None
    if key is None and isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        key = "model"
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            found = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
            raise DyMoInputError(f"weights {file} have no entry {key!r} (found {found}).")
        state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(map(str, state))[:6] if isinstance(state, Mapping) else type(state).__name__
        raise DyMoInputError(f"weights {file} are not a network state_dict (found {found}).")
    problems = weights_mismatches(network, state)
    if problems:
        more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
        raise DyMoInputError(f"weights {file} do not fit the {type(network).__name__}: {problems[0]}{more}.")
    network.load_state_dict(state)
    return network


def load_calibration(
    path: str | os.PathLike,
    network: torch.nn.Module | None = None,
    map_location: torch.device | str | None = "cpu",
) -> Any:
    """Read a :class:`~monai_dymo.calibration.SubsetCalibration` file and check that it fits ``network``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: one line naming the file: not a calibration file, or the way it does not fit the network
            (modalities, classes or projection width, as checked by :meth:`DyMoInferer.check_network`).
    """
    from .calibration import SubsetCalibration
    from .inferers import DyMoInferer

    file = os.fspath(path)
    if not os.path.isfile(file):
        raise DyMoFileNotFoundError(f"calibration file not found: {file}")
    try:
        calibration = SubsetCalibration.load(file, map_location=map_location)
    except ValueError as e:
        message = str(e) if file in str(e) else f"calibration {file}: {e}"
        raise DyMoInputError(message) from None
    except Exception as e:
        raise DyMoInputError(f"calibration {file} could not be read as a PyTorch file ({_first_line(e)}).") from None
    if network is not None:
        try:
            DyMoInferer(calibration).check_network(network)
        except ValueError as e:
            raise DyMoInputError(f"calibration {file} does not fit the network: {e}") from None
    return calibration
