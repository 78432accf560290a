"""`python -m lib_copylora presets`: list block-weight presets, their values and the formats they fit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.block_spec import families_for_count, format_values
from ..core.family import Family
from ..core.presets import default_presets, presets_for, read_presets, user_preset_path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "presets",
        help="list block-weight presets",
        description="List block-weight presets (the defaults plus the user's file) and the families they fit.",
    )
    parser.add_argument("--family", choices=[f.value for f in Family],
                        help="show only presets that fit this model family")
    parser.add_argument("--file", type=Path, default=None,
                        help="user preset file (default: $COPYLORA_PRESETS or block_weight_presets.txt "
                             "at the extension root)")
    parser.set_defaults(func=run)


def _fits(count: int) -> str:
    families = "/".join(f.label for f in families_for_count(count))
    return f"{families} ({count})"


def run(args: argparse.Namespace) -> int:
    path = args.file if args.file is not None else user_preset_path()
    presets, problems = read_presets(path)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if args.family:
        presets = presets_for(Family(args.family), presets)
    defaults = default_presets()
    if any(problem.line == 0 for problem in problems):
        status = " (unreadable; defaults only)"
    else:
        status = "" if path.is_file() else " (not found; defaults only)"
    print(f"# user presets: {path}{status}")
    width = max((len(name) for name in presets), default=4)
    for name, values in presets.items():
        origin = "default" if defaults.get(name) == values else "user"
        print(f"{name:<{width}}  {_fits(len(values)):<14}  {origin:<7}  {format_values(values)}")
    return 0
