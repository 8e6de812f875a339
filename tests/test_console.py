"""Quiet logs: progress bars only on a terminal or in a notebook, no nvImageCodec warning on every stage."""

from __future__ import annotations

import io
import sys
import warnings

from monai_dymo._console import bar_disabled


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert bar_disabled(False, _Tty()) and bar_disabled(None, _Tty())  # not asked for
    assert not bar_disabled(True, _Tty())  # asked for, on a terminal
    assert bar_disabled(True, io.StringIO())  # asked for, into a log file: no carriage-return lines
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert not bar_disabled(True, io.StringIO())  # a notebook shows its bars


def test_calibration_bar_not_written_into_a_log(monkeypatch, capsys):
    import torch

    from monai_dymo.calibration import fit_calibration

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    names = ("a", "b")
    batches = [{"a": torch.randn(4, 3), "b": torch.randn(4, 3), "label": torch.tensor([0, 1, 0, 1])}]
    lin = torch.nn.Linear(3, 4)

    def encode(x):
        return {m: lin(x[m]).reshape(-1, 1, 4) for m in names}

    def fuse(tokens, subset):
        h = sum(tokens[m][:, 0] * subset[:, i : i + 1].float() for i, m in enumerate(names))
        return h[:, :2], torch.nn.functional.normalize(h, dim=-1)

    fit_calibration(encode, fuse, batches, modalities=names, num_classes=2, progress=True)
    assert "\r" not in capsys.readouterr().err  # stderr is not a terminal under pytest


def test_no_nvimagecodec_warning_from_the_loader(monkeypatch):
    """Building the tolerant loader (MONAI's default readers) warns nothing about the optional GPU DICOM decoder; other
    warnings still pass."""
    from monai.data import image_reader

    from monai_dymo.transforms.io import LoadModalitiesd

    def init(self, *args, **kwargs):  # as MONAI's reader does when the plugin does not register
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully.", UserWarning)

    monkeypatch.setattr(image_reader.PydicomReader, "__init__", init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        LoadModalitiesd(keys=["t1"])
        warnings.warn("another warning", UserWarning)
    assert [str(w.message) for w in caught] == ["another warning"]
