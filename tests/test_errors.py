"""Input errors at the surface: the root cause behind MONAI's wrappers, printed as the last line, exit status kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from monai_dymo.cohort.spec import CohortSpec
from monai_dymo.errors import DyMoFileNotFoundError, DyMoInputError, error_line, input_error, install_excepthook


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


def _internal_bug():
    """A ValueError of an internal check, raised in the package (a pattern of the wrong shape)."""
    from monai_dymo.missing_patterns_io import write_pattern_table

    write_pattern_table("unused.csv", [[1, 0, 1]], ["a", "b"])


def _raise(exc: BaseException):
    raise exc


def test_input_error_is_found_behind_monai_wrappers():
    err = input_error(_wrapped(_bad_spec))
    assert isinstance(err, DyMoInputError) and "unknown modality kind 'imgae3d'" in str(err)
    assert error_line(err).startswith("monai-dymo: error: cohort.modalities[0] ('t1'): unknown modality kind")
    assert input_error(_wrapped(lambda: _raise(DyMoInputError("cohort.yaml: 'classes' bad")))) is not None
    # any other ValueError is not an input error, also one raised in the package: its traceback is kept
    assert input_error(_wrapped(lambda: int("x"))) is None
    bug = _wrapped(_internal_bug)
    assert isinstance(bug.__cause__.__cause__, ValueError) and input_error(bug) is None
    # an input error raised while handling another one is reported, not the one it was handling
    try:
        try:
            _bad_spec()
        except ValueError:
            CohortSpec.from_config({"datalist": "d.json", "classes": ["a"], "modalities": [{"name": "x"}]})
    except ValueError as e:
        assert "at least two distinct class names" in str(input_error(e))
    # a bug met while handling an input error is a bug
    try:
        try:
            _bad_spec()
        except ValueError:
            _internal_bug()
    except ValueError as e:
        assert input_error(e) is None
    # our own wrapper adding the file to an input error is the one reported
    try:
        try:
            _bad_spec()
        except DyMoInputError as e:
            raise DyMoInputError(f"cohort.yaml: {e}") from e
    except DyMoInputError as e:
        assert input_error(e) is e


def test_missing_files_are_input_errors_and_file_not_found_errors(tmp_path):
    from monai_dymo.cohort.datalist import read_datalist

    spec = CohortSpec.from_config({"datalist": str(tmp_path / "d.json"), "classes": ["a", "b"],
                                   "modalities": [{"name": "t1", "kind": "image3d", "spatial_size": [8, 8, 8]}]})
    with pytest.raises(FileNotFoundError, match="datalist not found") as info:
        read_datalist(spec)
    assert isinstance(info.value, DyMoFileNotFoundError) and isinstance(info.value, ValueError)
    assert input_error(info.value) is info.value
    import monai_dymo

    assert monai_dymo.DyMoInputError is DyMoInputError and monai_dymo.DyMoFileNotFoundError is DyMoFileNotFoundError


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
    monkeypatch.delenv("MONAI_DYMO_TRACEBACK")
    for n, bug in enumerate((_wrapped(lambda: int("x")), _wrapped(_internal_bug)), start=2):
        hook(type(bug), bug, bug.__traceback__)
        assert len(calls) == n and calls[-1][1] is bug and capsys.readouterr().err == ""


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


def _run_bundle(tmp_path, name: str, expression: str) -> subprocess.CompletedProcess:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"imports": ["$import monai_dymo", "$import monai_dymo.missing_patterns_io",
                                             "$import monai_dymo.cohort.plan"], name: expression, "run": [f"@{name}"]}))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("MONAI_DYMO_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_under_monai_bundle_run_a_bug_keeps_its_traceback_and_an_input_error_is_one_line(tmp_path):
    bug = _run_bundle(tmp_path, "internal",
                      "$monai_dymo.missing_patterns_io.write_pattern_table('p.csv', [[1, 0, 1]], ['a', 'b'])")
    lines = bug.stdout.strip().splitlines()
    assert bug.returncode != 0 and not any(line.startswith("monai-dymo: error:") for line in lines), bug.stdout[-3000:]
    assert "Traceback" in bug.stdout and "ValueError: pattern has shape (1, 3)" in bug.stdout
    assert os.path.join("monai_dymo", "missing_patterns_io.py") in bug.stdout
    user = _run_bundle(tmp_path, "user", "$monai_dymo.cohort.plan.check_overrides({'batch_size': 0})")
    lines = user.stdout.strip().splitlines()
    assert user.returncode != 0 and "Traceback" not in user.stdout, user.stdout[-3000:]
    assert lines[-1] == "monai-dymo: error: cohort plan: batch_size must be a positive integer, got 0."
