"""The core and the trainer never import the WebUI (`modules`) or gradio (docs/architecture.md §1)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "lib_copylora"
FORBIDDEN = {"modules", "gradio"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ["core", "train", "hosts", "service"])
def test_host_agnostic_packages_never_import_webui_or_gradio(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"lib_copylora/{package} has no Python files"
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & FORBIDDEN) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_rule_catches_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from modules import shared\n    import gradio as gr\n")
    assert _imported_roots(bad) & FORBIDDEN == {"modules", "gradio"}


def test_the_tab_reaches_the_host_only_through_the_service():
    """ui/ may ask compat about gradio, but the WebUI itself (its Lora list, its model, its lock) is behind the
    service's host object, so the tab and the API behave the same."""
    offenders = {}
    for path in sorted((ROOT / "ui").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 2 and (node.module or "").startswith("webui"):
                names = [alias.name for alias in node.names]
                if node.module != "webui.compat" and not (node.module == "webui" and names == ["compat"]):
                    offenders[path.name] = node.module
        if "modules" in _imported_roots(path):
            offenders[path.name] = "modules"
    assert offenders == {}


def test_the_command_line_starts_without_lycoris():
    """`--help`, `presets` and `inspect` of a plain LoRA never need lycoris-lora's package (seconds to import):
    its math is imported when a LyCORIS kind is first computed (bench/startup.py measures the time)."""
    import subprocess
    import sys

    code = ("import sys; from lib_copylora.cli import build_parser; build_parser(); "
            "import lib_copylora.core.formats, lib_copylora.core.describe; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'lycoris'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
