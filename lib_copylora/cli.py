"""`python -m lib_copylora <command> ...`: one sub-command per module in `lib_copylora/commands`.

Each command module provides `add_parser(subparsers)` (which sets `func`) and keeps its logic out of this file."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("merge", "inspect", "presets", "train", "demo")


def _quiet_threads() -> None:
    # Hundreds of small QR/SVD calls suffer from OpenMP spin-waiting on shared cores (docs/architecture.md §5).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    _quiet_threads()
    from .core.errors import CopyLoraError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CopyLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed our output: not an error of ours
        sys.stderr.close()
        return 0
