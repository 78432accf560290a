"""`python -m lib_copylora <command> ...`: one sub-command per module in `lib_copylora/commands`.

Each command module provides `add_parser(subparsers)` (which sets `func`) and keeps its logic out of this file."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

COMMANDS = ("merge", "inspect", "presets", "train", "demo")
# argparse reads `-1` and `-0.5` as values but `-1e-1` or `-inf` as unknown options; every number is a value here
# (no option of ours looks like one), so `--ratios 1 -1e-1` works.
_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """argparse with negative numbers in any float spelling taken as values (sub-command parsers inherit it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NUMBER


def _quiet_threads() -> None:
    # Hundreds of small QR/SVD calls suffer from OpenMP spin-waiting on shared cores (docs/architecture.md §5).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m lib_copylora",
        description="CopyLoRA: copy-machine LoRA training, exact difference merging and block weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lib_copylora.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"lib_copylora.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def _refuse(message: str) -> int:
    """Our errors are one line; a message that quotes a library's several lines is folded into one."""
    print("error: " + "; ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)
    return 2


def _missing_package(exc: ModuleNotFoundError) -> int:
    """A package CopyLoRA needs is not in this Python (run outside .venv or the WebUI's venv): one line saying how
    to get it. A module of our own that cannot be found is a bug, and keeps its traceback."""
    package = (exc.name or "").split(".")[0]
    if not package or package == "lib_copylora":
        raise exc
    return _refuse(f"this Python ({sys.executable}) has no {package}, which CopyLoRA needs: `bash dev.sh setup` "
                   f"installs everything into .venv (then run .venv/bin/python -m lib_copylora), or pip install "
                   f"requirements-dev.txt into this Python")


def main(argv: list[str] | None = None) -> int:
    _quiet_threads()
    # PIL warns about a large image before our scan refuses it with its own line; the warning would only repeat it
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", module=r"PIL\.")
    try:
        from .core.errors import CopyLoraError

        parser = build_parser()
    except ModuleNotFoundError as exc:
        return _missing_package(exc)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CopyLoraError as exc:
        return _refuse(str(exc))
    except ModuleNotFoundError as exc:  # diffusers or transformers, imported when a model is loaded
        return _missing_package(exc)
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named or we write: a bug, keep its traceback
            raise
        return _refuse(f"cannot use {exc.filename}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed our output: not an error of ours
        sys.stderr.close()
        return 0
