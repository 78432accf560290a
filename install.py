"""Run by the WebUI's launcher at start-up (as `python install.py`): installs what CopyLoRA needs and the WebUI does
not already pin, and upgrades it when an older version is there.

Idempotent and quick: it reads installed versions and does nothing when they are recent enough. torch,
safetensors, numpy and gradio come with the WebUI and are never touched here."""

import importlib.metadata

import launch

# lycoris-lora 4.0.0 is the first release whose functional math takes `backend=` (`diff_weight` of locon and loha)
# and has `lokr.kron_weight`, both used by lib_copylora/core/layers.py; 3.x has neither.
NEEDED = {
    # distribution: lowest version that works
    "lycoris-lora": (4, 0, 0),
}


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string (`4.1.3` → (4, 1, 3); `3.2.0.post2` → (3, 2, 0))."""
    numbers = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def installed(distribution: str):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure(distribution: str, floor: tuple[int, ...]) -> None:
    wanted = ".".join(map(str, floor))
    requirement = f"{distribution}>={wanted}"
    have = installed(distribution)
    if have is None:
        launch.run_pip(f'install "{requirement}"', f"{requirement} for CopyLoRA")
    elif release(have) < floor:
        print(f"CopyLoRA: {distribution} {have} is older than {wanted}, which CopyLoRA needs; upgrading it")
        launch.run_pip(f'install --upgrade "{requirement}"', f"{requirement} for CopyLoRA (replacing {have})")


for name, lowest in NEEDED.items():
    ensure(name, lowest)
