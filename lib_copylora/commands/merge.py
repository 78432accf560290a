"""`python -m lib_copylora merge`: merge LoRAs with ratios (B − A: `--models B A --ratios 1 -1`), exactly or by SVD.

Flag names follow kohya sd-scripts' networks/merge_lora.py and svd_merge_lora.py where they exist, so the
commands users already run keep working with this tool."""

from __future__ import annotations

import argparse
import collections
import functools
from pathlib import Path
from typing import Optional

from ..service.merge_options import NO_BLOCKS, SAVE_ALIASES, SAVE_PRECISIONS

SAVE_CHOICES = sorted((*SAVE_PRECISIONS, *SAVE_ALIASES))


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge LoRAs with ratios (e.g. B - A), exactly or re-ranked by SVD",
        description="Merge LoRAs: ΔW = Σ ratio·ΔW. Without --new_rank the result is exact (ranks concatenated); "
                    "with it, each module is the best approximation of the exact merge at that rank.",
        epilog="example: python -m lib_copylora merge --models B.safetensors A.safetensors --ratios 1 -1 "
               "--save_to diff.safetensors",
    )
    add = parser.add_argument
    add("--models", nargs="+", required=True, metavar="FILE", help="LoRA files to merge (.safetensors)")
    add("--ratios", nargs="+", type=float, required=True, metavar="R",
        help="one multiplier per model, any sign (B − A: 1 -1)")
    add("--save_to", required=True, metavar="FILE", help="output .safetensors file")
    add("--save_precision", choices=SAVE_CHOICES, default="fp16",
        help="dtype of the saved tensors (default fp16)")
    add("--precision", choices=["float", "fp16", "bf16"], default="float",
        help="compute precision, accepted for kohya compatibility: the math is always float32")
    add("--new_rank", type=int, default=None, metavar="N",
        help="SVD re-rank linear and 1x1 conv modules to rank N (default: exact merge, ranks add up)")
    add("--new_conv_rank", type=int, default=None, metavar="N",
        help="rank of 3x3 conv modules when re-ranking (default: --new_rank)")
    add("--energy", type=float, default=None, metavar="X",
        help="re-rank each module to the smallest rank keeping share X in (0, 1] of its squared singular "
             "values, capped by --new_rank/--new_conv_rank")
    add("--device", default="cpu", metavar="cpu|cuda", help="where the merge math runs (default cpu)")
    add("--te_ratios", nargs="+", type=float, default=None, metavar="R",
        help="per-model multipliers for text-encoder modules, replacing --ratios there")
    add("--unet_ratios", nargs="+", type=float, default=None, metavar="R",
        help="per-model multipliers for UNet modules, replacing --ratios there")
    add("--blocks", nargs="+", default=None, metavar="SPEC",
        help="per-model block weights: numbers like 1,0,0,... (17 or 26 for SD1/SD2, 12 or 20 for SDXL), "
             f"a preset name, or {NO_BLOCKS} for none")
    add("--presets", default=None, metavar="FILE",
        help="block-weight preset file, NAME:v1,v2,... per line (default: shipped presets + the user's file)")
    add("--base", default=None, metavar="CHECKPOINT",
        help="the model the LoRAs were made for (SD1/SD2/SDXL single-file .safetensors): needed when an input has "
             "DoRA, OFT/BOFT, IA3 or GLoRA modules, whose change depends on the weight they modify; only the "
             "weights those modules touch are read")
    add("--overwrite", action="store_true", help="replace --save_to if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.errors import FormatError, MergeError, OutputExists
    from ..core.merge import MergeSpec
    from ..core.output_names import output_name_problem
    from ..service.merge_run import MergeJob, check_inputs, run_merge_job

    save_to = Path(args.save_to)
    problem = output_name_problem(save_to.name.removesuffix(".safetensors"))  # the name, as the tab and API check
    if problem:
        raise MergeError(f"--save_to: {problem}")
    if _exists(save_to, "--save_to") and not args.overwrite:
        raise OutputExists(f"{save_to} exists: pass --overwrite to replace it")
    check_inputs(len(args.models), len(args.ratios), None if args.blocks is None else len(args.blocks))
    # Build the spec before reading anything so bad ranks or ratio counts fail at once.
    spec = MergeSpec(ratios=tuple(args.ratios), te_ratios=args.te_ratios, unet_ratios=args.unet_ratios,
                     new_rank=args.new_rank, new_conv_rank=args.new_conv_rank, energy=args.energy,
                     device=args.device, output_name=save_to.stem)
    if args.precision != "float":
        print(f"note: --precision {args.precision} ignored: merges are computed in float32")
    for model in args.models:
        if not _exists(Path(model), "--models") or not Path(model).is_file():
            raise FormatError(f"{model}: no such file")
    job = MergeJob(tuple(Path(m) for m in args.models), spec, save_to, args.save_precision, args.overwrite,
                   None if args.blocks is None else tuple(args.blocks), _presets(args), _base_provider(args.base))
    outcome = run_merge_job(job)
    for note in outcome.notes:
        print(f"note: {note}")
    if args.base is not None and outcome.base is None:
        print(f"note: --base {args.base} not needed: no input has DoRA, OFT, IA3 or GLoRA modules")
    for warning in outcome.warnings:
        print(f"warning: {warning}")
    read_s, merge_s, write_s = outcome.seconds
    written = outcome.written
    print(_summary(outcome.loras, outcome.merged, outcome.spec, args))
    print(f"wrote {written} ({args.save_precision}, {written.stat().st_size / 2**20:.1f} MiB) in "
          f"{read_s + merge_s + write_s:.2f} s (read {read_s:.2f} s, merge {merge_s:.2f} s, write {write_s:.2f} s)")
    return 0


def _exists(path: Path, flag: str) -> bool:
    """`path.exists()`, with a name the file system refuses (too long, a NUL) as our error rather than OSError."""
    from ..core.errors import FormatError

    try:
        return path.exists()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise FormatError(f"{flag} {str(path)[:80]}{'...' if len(str(path)) > 80 else ''}: {reason}") from None


def _base_provider(path: Optional[str]):
    """The base checkpoint, opened (and hashed) by the merge run only when an input needs it."""
    if path is None:
        return None
    from ..core.base_weights import open_checkpoint_base

    return functools.partial(open_checkpoint_base, path)


def _presets(args: argparse.Namespace) -> dict:
    """The preset file, read only when a block spec may name a preset; its unreadable lines become warnings."""
    if args.blocks is None or all(text.strip() == NO_BLOCKS for text in args.blocks):
        return {}
    from ..core.presets import read_presets

    presets, problems = read_presets(args.presets)
    for problem in problems:
        print(f"warning: {problem}")
    return presets


def _summary(loras, merged, spec, args) -> str:
    inputs = ", ".join(f"{lora.name} ×{ratio:g}" for lora, ratio in zip(loras, spec.ratios))
    ranks = collections.Counter(layer.rank for layer in merged.layers.values() if layer.rank is not None)
    full = sum(1 for layer in merged.layers.values() if layer.rank is None)
    rank_text = ", ".join(f"rank {r}: {n}" for r, n in sorted(ranks.items()))
    if full:
        rank_text += f"{', ' if rank_text else ''}full diff: {full}"
    mode = "SVD re-rank" if spec.reranks else "exact concat"
    return (f"merged {len(merged.layers)} modules of {len(loras)} {merged.family.label} LoRAs ({inputs}) by "
            f"{mode} on {spec.device}: {rank_text}")
