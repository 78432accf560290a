"""install.py, as the WebUI's launcher runs it: installs lycoris-lora when missing, upgrades a 3.x (which lacks the
functional math core/layers.py calls) and says so, and leaves a recent one alone."""

import importlib.metadata
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

INSTALL = Path(__file__).resolve().parents[1] / "install.py"


def run_install(monkeypatch, version):
    calls = []
    monkeypatch.setitem(sys.modules, "launch", SimpleNamespace(run_pip=lambda args, desc: calls.append(args)))

    def fake_version(name):
        if version is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    runpy.run_path(str(INSTALL), run_name="__main__")
    return calls


def test_missing_is_installed_at_the_floor(monkeypatch):
    assert run_install(monkeypatch, None) == ['install "lycoris-lora>=4.0.0"']


@pytest.mark.parametrize("old", ["3.0.0", "3.2.0.post2", "3.4.0"])
def test_an_older_version_is_upgraded_and_the_console_says_so(monkeypatch, capsys, old):
    assert run_install(monkeypatch, old) == ['install --upgrade "lycoris-lora>=4.0.0"']
    assert f"lycoris-lora {old} is older than 4.0.0" in capsys.readouterr().out


@pytest.mark.parametrize("recent", ["4.0.0", "4.1.3", "10.0.0"])
def test_a_recent_version_is_left_alone(monkeypatch, capsys, recent):
    assert run_install(monkeypatch, recent) == [] and capsys.readouterr().out == ""


def test_the_installed_lycoris_has_what_core_layers_calls():
    import inspect

    from lycoris.functional import locon, loha, lokr

    assert "backend" in inspect.signature(locon.diff_weight).parameters
    assert "backend" in inspect.signature(loha.diff_weight).parameters
    assert "backend" in inspect.signature(lokr.kron_weight).parameters
