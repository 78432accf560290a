"""Installing this checkout into a WebUI's extensions folder, as a link."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXTENSION_NAME = "copylora"


def install_extension(extensions_dir: Path, repo_root: Path = REPO_ROOT) -> Path:
    """Link `repo_root` into extensions/; a stale link is replaced, a real folder is left alone (and refused)."""
    extensions_dir.mkdir(parents=True, exist_ok=True)
    link = extensions_dir / EXTENSION_NAME
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise RuntimeError(f"{link} is a real folder, not our link; move it away to run the webui tier")
    link.symlink_to(repo_root, target_is_directory=True)
    return link
