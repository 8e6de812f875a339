"""Input errors at the surface: the root cause behind MONAI's wrappers, printed as the last line, exit status kept."""

from __future__ import annotations

import sys

import pytest

from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.errors import DyMoInputError, error_line, input_error, install_excepthook


def _wrapped(make):
    """``make()``'s error as MONAI's config expressions wrap it (``RuntimeError(...) from e``), twice."""
    try:
        try:
            make()
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $monai_dymo.cohort.CohortSpec...") from e
    except RuntimeError as outer:
        try:
            raise RuntimeError("Failed to instantiate component") from outer
        except RuntimeError as e:
            return e


def _bad_spec():
    CohortSpec.from_config({"datalist": "d.json", "classes": ["a", "b"],
                            "modalities": [{"name": "t1", "kind": "imgae3d", "spatial_size": [8, 8, 8]}]})


def test_input_error_is_found_behind_monai_wrappers():
    err = input_error(_wrapped(_bad_spec))
    assert isinstance(err, ValueError) and "unknown modality kind 'imgae3d'" in str(err)
    assert error_line(err).startswith("monai-dymo: error: cohort.modalities[0] ('t1'): unknown modality kind")
    # a ValueError of other code (a bug, a library) is not an input error: its traceback is kept
    assert input_error(_wrapped(lambda: int("x"))) is None
    assert input_error(_wrapped(lambda: (_ for _ in ()).throw(DyMoInputError("cohort.yaml: 'classes' bad")))) is not None
    # an error raised while handling another one is reported, not the one it was handling
    try:
        try:
            _bad_spec()
        except ValueError:
            CohortSpec.from_config({"datalist": "d.json", "classes": ["a"], "modalities": [{"name": "x"}]})
    except ValueError as e:
        assert "at least two distinct class names" in str(input_error(e))


def test_hook_prints_the_message_last_and_keeps_other_tracebacks(monkeypatch, capsys):
    import monai_dymo.errors

    calls = []
    monkeypatch.setattr(monai_dymo.errors._hook, "previous", sys.__excepthook__, raising=False)  # restored after
    monkeypatch.setattr(sys, "excepthook", lambda *a: calls.append(a))
    install_excepthook()
    install_excepthook()  # idempotent
    hook = sys.excepthook
    exc = _wrapped(_bad_spec)
    monkeypatch.delenv("MONAI_DYMO_TRACEBACK", raising=False)
    hook(type(exc), exc, exc.__traceback__)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "MONAI_DYMO_TRACEBACK=1" in lines[0]
    assert lines[-1] == error_line(input_error(exc)) and not calls
    monkeypatch.setenv("MONAI_DYMO_TRACEBACK", "1")
    hook(type(exc), exc, exc.__traceback__)
    assert len(calls) == 1 and capsys.readouterr().err.strip().splitlines()[-1] == error_line(input_error(exc))
    bug = _wrapped(lambda: int("x"))
    hook(type(bug), bug, bug.__traceback__)
    assert len(calls) == 2 and calls[-1][1] is bug and capsys.readouterr().err == ""


def test_the_hook_is_installed_in_monai_bundle_processes_only(monkeypatch):
    import importlib
    import types

    import monai_dymo
    import monai_dymo.errors

    monkeypatch.setattr(monai_dymo.errors._hook, "previous", sys.__excepthook__, raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    importlib.reload(monai_dymo)  # a script, a notebook, pytest: Python's own tracebacks
    assert sys.excepthook is sys.__excepthook__ and not monai_dymo.errors.running_monai_bundle()
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="monai.bundle.__main__")  # `python -m monai.bundle run ...`
    monkeypatch.setitem(sys.modules, "__main__", main)
    importlib.reload(monai_dymo)
    assert sys.excepthook is monai_dymo.errors._hook


@pytest.mark.parametrize("value", [0, -3])
def test_empty_runs_are_refused(value, tmp_path):
    from monai_dymo.cohort import cohort_dataset

    spec = CohortSpec.from_config({"datalist": str(tmp_path / "d.json"), "classes": ["a", "b"],
                                   "modalities": [{"name": "t1", "kind": "image3d", "spatial_size": [8, 8, 8]}]})
    with pytest.raises(ValueError, match="max_patients must be at least 1"):
        cohort_dataset(spec, "testing", max_patients=value, cache=None)
