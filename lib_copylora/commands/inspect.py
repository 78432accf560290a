"""`python -m lib_copylora inspect FILE [--json]`: what a LoRA file holds (kind, family, ranks, blocks, metadata)."""

from __future__ import annotations

import argparse
import json

from ..core.describe import describe_lora, description_json, format_description
from ..core.formats import read_lora


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect", help="describe a LoRA file",
        description="Print a LoRA's kind, model family, rank and alpha, the blocks it touches and its metadata.")
    parser.add_argument("file", metavar="FILE", help="a .safetensors LoRA (kohya, LyCORIS or PEFT keys)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--lenient", action="store_true",
                        help="list keys of unknown formats instead of refusing the file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    lora = read_lora(args.file, strict=not args.lenient)
    description = describe_lora(lora)
    if args.json:
        print(json.dumps(description_json(description), indent=2, ensure_ascii=False))
    else:
        print(format_description(description))
    return 0
