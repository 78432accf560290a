"""Benchmark of difference merging on realistic SD1.5 LoRAs, against the established method in the same run.

Run from the repository root: `python bench/merge.py [--threads N] [--baseline-repeats N]`.

It builds seeded SD1.5 LoRAs with every module kohya trains at its real shape (UNet attention q/k/v/out, ff,
proj_in/proj_out as 1×1 convs, text-encoder q/k/v/out_proj/fc1/fc2; the LoCon pair adds the resnet, down- and
upsampler convs), writes them as fp16 files to a temporary folder, reads them back, and measures:
  (a) re-rank of a rank-8 B − A difference to rank 16, per module, against the established method (dense ΔW, full
      `torch.linalg.svd`, truncate: what kohya's svd_merge_lora.py does), on one module of each distinct shape,
      and its relative Frobenius error against that method's rank-16 reconstruction;
  (b) the wall time of the whole re-rank of a rank-32 LoCon pair (B − A to rank 32, conv rank 32);
  (c) the exact concat merge against reading both inputs plus writing the output;
  (d) a base-aware case: a DoRA pair (rank 8, the same 264 modules) merged B − A against a seeded SD1.5-shaped
      base checkpoint (fp16, compvis keys, only these modules' weights, read lazily), exactly and re-ranked to 16,
      reported next to (a)'s whole-file plain re-rank.
"""

from __future__ import annotations

import os

# Before torch is imported: OpenMP spin-waiting ruins small LAPACK calls on shared cores (docs/architecture.md §5).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_copylora.core import concat  # noqa: E402
from lib_copylora.core.family import Family  # noqa: E402
from lib_copylora.core.formats import read_lora, write_lora  # noqa: E402
from lib_copylora.core.base_layers import DoraLayer  # noqa: E402
from lib_copylora.core.base_weights import open_checkpoint_base  # noqa: E402
from lib_copylora.core.checkpoint_keys import checkpoint_key  # noqa: E402
from lib_copylora.core.layers import LowRankLayer  # noqa: E402
from lib_copylora.core.lorafile import LoraFile  # noqa: E402
from lib_copylora.core.merge import MergeSpec, MergeWarning, merge_loras  # noqa: E402
from lib_copylora.core.rerank import RankPolicy, rerank_terms  # noqa: E402

TARGET_SPEEDUP = 200.0
TARGET_ERROR = 1e-4
TARGET_LOCON_SECONDS = 3.0
TARGET_CONCAT_RATIO = 2.0
TEXT_WIDTH = 768  # SD1.5 CLIP ViT-L: hidden 768, MLP 3072, 12 layers; also the UNet's cross-attention context


def attention_modules() -> dict[str, tuple[int, ...]]:
    """kohya name → target weight shape for every module a plain SD1.5 LoRA trains (264 of them)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(12):
        prefix = f"lora_te_text_model_encoder_layers_{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{prefix}_self_attn_{proj}"] = (TEXT_WIDTH, TEXT_WIDTH)
        shapes[f"{prefix}_mlp_fc1"] = (4 * TEXT_WIDTH, TEXT_WIDTH)
        shapes[f"{prefix}_mlp_fc2"] = (TEXT_WIDTH, 4 * TEXT_WIDTH)

    def transformer(prefix: str, c: int) -> None:
        shapes[f"{prefix}_proj_in"] = (c, c, 1, 1)  # SD1 projects with 1×1 convs
        shapes[f"{prefix}_proj_out"] = (c, c, 1, 1)
        block = f"{prefix}_transformer_blocks_0"
        for attn, context in (("attn1", c), ("attn2", TEXT_WIDTH)):
            shapes[f"{block}_{attn}_to_q"] = (c, c)
            shapes[f"{block}_{attn}_to_k"] = (c, context)
            shapes[f"{block}_{attn}_to_v"] = (c, context)
            shapes[f"{block}_{attn}_to_out_0"] = (c, c)
        shapes[f"{block}_ff_net_0_proj"] = (8 * c, c)  # GEGLU: value and gate halves
        shapes[f"{block}_ff_net_2"] = (c, 4 * c)

    for level, c in enumerate((320, 640, 1280)):
        for j in range(2):
            transformer(f"lora_unet_down_blocks_{level}_attentions_{j}", c)
    transformer("lora_unet_mid_block_attentions_0", 1280)
    for level, c in zip((1, 2, 3), (1280, 640, 320)):
        for j in range(3):
            transformer(f"lora_unet_up_blocks_{level}_attentions_{j}", c)
    return shapes


# SD1.5 up-block resnet input channels (the block's own width plus the skip connection it concatenates).
_UP_RESNET_INPUTS = {0: (2560, 2560, 2560), 1: (2560, 2560, 1920), 2: (1920, 1280, 960), 3: (960, 640, 640)}
_UP_WIDTHS = (1280, 1280, 640, 320)


def resnet_modules() -> dict[str, tuple[int, ...]]:
    """The convolutions a LoCon adds: resnet conv1/conv2 (3×3), conv_shortcut (1×1), down/upsampler convs."""
    shapes: dict[str, tuple[int, ...]] = {}

    def resnet(prefix: str, c_in: int, c: int) -> None:
        shapes[f"{prefix}_conv1"] = (c, c_in, 3, 3)
        shapes[f"{prefix}_conv2"] = (c, c, 3, 3)
        if c_in != c:
            shapes[f"{prefix}_conv_shortcut"] = (c, c_in, 1, 1)

    c_in = 320
    for level, c in enumerate((320, 640, 1280, 1280)):
        for j in range(2):
            resnet(f"lora_unet_down_blocks_{level}_resnets_{j}", c_in if j == 0 else c, c)
        c_in = c
        if level < 3:
            shapes[f"lora_unet_down_blocks_{level}_downsamplers_0_conv"] = (c, c, 3, 3)
    for j in range(2):
        resnet(f"lora_unet_mid_block_resnets_{j}", 1280, 1280)
    for level, c in enumerate(_UP_WIDTHS):
        for j, c_in in enumerate(_UP_RESNET_INPUTS[level]):
            resnet(f"lora_unet_up_blocks_{level}_resnets_{j}", c_in, c)
        if level < 3:
            shapes[f"lora_unet_up_blocks_{level}_upsamplers_0_conv"] = (c, c, 3, 3)
    return shapes


def make_pair(shapes: dict[str, tuple[int, ...]], rank: int, seed: int) -> tuple[LoraFile, LoraFile]:
    """A copier-like pair: B shares most of A's directions (same base, one feature apart), alpha 1 as published,
    a decaying spectrum so truncation has something to choose."""
    g = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -1.5, rank)
    a_layers, b_layers = {}, {}
    for name, shape in shapes.items():
        out_dim, fan_in = shape[0], shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
        down = torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5
        up = torch.randn(out_dim, rank, generator=g) * decay * 0.02
        down_b = down + 0.3 * torch.randn(rank, fan_in, generator=g) / fan_in ** 0.5
        up_b = up + 0.3 * torch.randn(out_dim, rank, generator=g) * decay * 0.02
        a_layers[name] = _layer(down, up, shape)
        b_layers[name] = _layer(down_b, up_b, shape)
    return LoraFile(a_layers, Family.SD1), LoraFile(b_layers, Family.SD1)


def _layer(down: torch.Tensor, up: torch.Tensor, shape: tuple[int, ...]) -> LowRankLayer:
    rank = down.shape[0]
    if len(shape) == 4:
        return LowRankLayer(down=down.reshape(rank, *shape[1:]), up=up.reshape(shape[0], rank, 1, 1), alpha=1.0)
    return LowRankLayer(down=down, up=up, alpha=1.0)


def baseline_rank_k(layers: list[LowRankLayer], ratios: list[float], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The established method: the dense merged ΔW, a full SVD, keep k. Returns (up (out, k), down (k, n))."""
    delta = sum(r * layer.delta().reshape(layer.shape[0], -1) for r, layer in zip(ratios, layers))
    u, s, vh = torch.linalg.svd(delta)
    return u[:, :k] * s[:k], vh[:k]


def _terms(names: list[str], loras: list[LoraFile], ratios: list[float]) -> dict:
    terms = {}
    for name in names:
        parts = [concat.Part(lora.layers[name], r, str(i)) for i, (lora, r) in enumerate(zip(loras, ratios))]
        terms[name] = concat.low_rank_term(parts, concat.module_shape(name, parts))
    return terms


def ours_rank_k(names: list[str], loras: list[LoraFile], ratios: list[float], k: int) -> dict:
    """Our route from the layers on: stacked scaled factors, QR, SVD of the small core (batched over `names`)."""
    return rerank_terms(_terms(names, loras, ratios), RankPolicy(new_rank=k))


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def bench_rerank_per_module(b: LoraFile, a: LoraFile, repeats: int) -> dict:
    """(a): one module of each distinct shape, ours against the baseline; ours also batched over its shape group."""
    groups: dict[tuple, list[str]] = {}
    for name, layer in a.layers.items():
        groups.setdefault(layer.shape, []).append(name)
    print(f"(a) B − A (rank 8 each) re-ranked to 16, one module per distinct shape ({len(groups)} of "
          f"{len(a.layers)} modules); 'batched' = the shape's whole group in one call, per module")
    print(f"    {'shape':>20} {'modules':>7} {'baseline s':>10} {'ours ms':>8} {'batched ms':>10} {'speed-up':>9} "
          f"{'batched':>8} {'rel. error':>10}")
    rows = []
    loras, ratios = [b, a], [1.0, -1.0]
    for shape, names in groups.items():
        name = names[0]
        layers = [b.layers[name], a.layers[name]]
        base_s, (base_up, base_down) = best_time(lambda: baseline_rank_k(layers, ratios, 16), repeats)
        ours_s, ours = best_time(lambda: ours_rank_k([name], loras, ratios, 16), 5)
        group_s, _ = best_time(lambda: ours_rank_k(names, loras, ratios, 16), 3)
        batched_s = group_s / len(names)
        base = base_up @ base_down
        error = float((ours[name][0] @ ours[name][1] - base).norm() / base.norm())
        rows.append((len(names), base_s, ours_s, batched_s, error))
        print(f"    {str(shape):>20} {len(names):>7} {base_s:>10.3f} {ours_s * 1e3:>8.2f} {batched_s * 1e3:>10.2f} "
              f"{base_s / ours_s:>8.0f}× {base_s / batched_s:>7.0f}× {error:>10.1e}")
    single = [r[1] / r[2] for r in rows]
    batched = [r[1] / r[3] for r in rows]
    worst_error = max(r[4] for r in rows)
    baseline_total = sum(r[0] * r[1] for r in rows)
    print(f"    speed-up per module, one call each: min {min(single):.0f}×, median {statistics.median(single):.0f}×, "
          f"max {max(single):.0f}×")
    print(f"    speed-up per module, batched as merge runs: min {min(batched):.0f}×, median "
          f"{statistics.median(batched):.0f}×, max {max(batched):.0f}×  (target ≥ {TARGET_SPEEDUP:.0f}×: "
          f"median {verdict(statistics.median(batched) >= TARGET_SPEEDUP)}, every module "
          f"{verdict(min(batched) >= TARGET_SPEEDUP)})")
    print(f"    worst relative Frobenius error vs the baseline's rank-16 ΔW: {worst_error:.1e} "
          f"(target ≤ {TARGET_ERROR:.0e}: {verdict(worst_error <= TARGET_ERROR)})")
    return {"baseline_total": baseline_total}


def bench_whole_rerank(b: LoraFile, a: LoraFile, baseline_total: float) -> float:
    spec = MergeSpec(ratios=(1.0, -1.0), new_rank=16)
    seconds, merged = best_time(lambda: merge_loras([b, a], spec), 1)
    print(f"    whole file through merge_loras, all {len(merged.layers)} modules: {seconds:.2f} s; the baseline "
          f"extrapolated from the table: {baseline_total:.0f} s ({baseline_total / seconds:.0f}×)")
    return seconds


def make_base(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int) -> Path:
    """A seeded fp16 checkpoint holding the weights of `shapes` under their compvis keys (std 0.02, SD-like)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {checkpoint_key(name, Family.SD1).key: (torch.randn(*shape, generator=g) * 0.02).half()
               for name, shape in shapes.items()}
    tensors["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(TEXT_WIDTH).half()
    path = folder / "base_sd15_shapes.safetensors"
    save_file(tensors, str(path))
    return path


def with_dora(lora: LoraFile, base_path: Path, seed: int) -> LoraFile:
    """The pair's layers with per-input magnitudes near the merged weight's own column norms, as trained DoRA has."""
    base = open_checkpoint_base(base_path, sha256="not needed here")
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, layer in lora.layers.items():
        merged = base.weight(name).float() + layer.delta().reshape(base.weight(name).shape)
        norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1)
        magnitude = norm * (1 + 0.05 * torch.randn(norm.shape, generator=g))
        layers[name] = DoraLayer(layer, magnitude.reshape(1, -1, *[1] * (merged.dim() - 2)))
    return LoraFile(layers, lora.family)


def bench_base_aware(folder: Path, plain_rerank_s: float) -> None:
    shapes = attention_modules()
    a, b = make_pair(shapes, rank=8, seed=3)
    start = time.perf_counter()
    base_path = make_base(folder, shapes, seed=4)
    made_s = time.perf_counter() - start
    b, a = with_dora(b, base_path, 5), with_dora(a, base_path, 6)
    paths = [write_lora(lora, folder / f"dora_{tag}.safetensors") for lora, tag in ((b, "B"), (a, "A"))]
    b, a = (read_lora(p) for p in paths)
    start = time.perf_counter()
    base = open_checkpoint_base(base_path)
    hash_s = time.perf_counter() - start
    exact_s, merged = best_time(lambda: merge_loras([b, a], MergeSpec(ratios=(1.0, -1.0)), base), 1)
    rerank_s, _ = best_time(lambda: merge_loras([b, a], MergeSpec(ratios=(1.0, -1.0), new_rank=16), base), 1)
    size = base_path.stat().st_size / 2**20
    print(f"(d) DoRA pair (rank 8, {len(merged.layers)} modules) B − A against a {size:.0f} MiB SD1.5-shaped base "
          f"(written in {made_s:.1f} s; hashed in {hash_s:.2f} s): exact {exact_s:.2f} s, re-ranked to 16 "
          f"{rerank_s:.2f} s; the plain pair's re-rank to 16 in (a): {plain_rerank_s:.2f} s "
          f"(DoRA re-rank {rerank_s / plain_rerank_s:.0f}× it: dense ΔW, Gram eigendecomposition per module)")


def bench_locon(folder: Path, threads: int) -> None:
    shapes = {**attention_modules(), **resnet_modules()}
    a, b = make_pair(shapes, rank=32, seed=2)
    paths = [write_lora(lora, folder / f"locon_{tag}.safetensors") for lora, tag in ((b, "B"), (a, "A"))]
    b, a = (read_lora(p) for p in paths)
    spec = MergeSpec(ratios=(1.0, -1.0), new_rank=32, new_conv_rank=32)
    seconds, merged = best_time(lambda: merge_loras([b, a], spec), 1)
    conv = sum(1 for layer in merged.layers.values() if len(layer.shape) == 4 and layer.shape[2:] != (1, 1))
    met = verdict(seconds < TARGET_LOCON_SECONDS)
    print(f"(b) LoCon pair (rank 32, {len(shapes)} modules of which {conv} 3×3 convs), B − A re-ranked to 32 / "
          f"conv 32: {seconds:.2f} s (target < {TARGET_LOCON_SECONDS:.0f} s: {met})")

    start = time.perf_counter()
    b, a = (read_lora(p) for p in paths)
    read_s = time.perf_counter() - start
    merge_s, merged = best_time(lambda: merge_loras([b, a], MergeSpec(ratios=(1.0, -1.0))), 1)
    start = time.perf_counter()
    out = write_lora(merged, folder / "locon_diff.safetensors")
    write_s = time.perf_counter() - start
    ratio = merge_s / (read_s + write_s)
    size = sum(p.stat().st_size for p in paths) / 2**20
    print(f"(c) exact concat of the LoCon pair ({size:.0f} MiB in, {out.stat().st_size / 2**20:.0f} MiB out): merge "
          f"{merge_s:.2f} s vs read {read_s:.2f} s + write {write_s:.2f} s = {ratio:.2f}× "
          f"(target ≤ {TARGET_CONCAT_RATIO:.0f}×: {verdict(ratio <= TARGET_CONCAT_RATIO)})")


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark difference merging against dense SVD.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both methods (default 1)")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="timed runs of the baseline per module")
    parser.add_argument("--only-base-aware", action="store_true",
                        help="run only (d) and the plain whole-file re-rank it is reported against")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", MergeWarning)
    print(f"torch {torch.__version__}, {args.threads} thread(s), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="copylora-bench-") as tmp:
        folder = Path(tmp)
        a, b = make_pair(attention_modules(), rank=8, seed=1)
        paths = [write_lora(lora, folder / f"{tag}.safetensors") for lora, tag in ((b, "B"), (a, "A"))]
        b, a = (read_lora(p) for p in paths)
        if args.only_base_aware:
            plain_s = bench_whole_rerank(b, a, float("nan"))
        else:
            totals = bench_rerank_per_module(b, a, args.baseline_repeats)
            plain_s = bench_whole_rerank(b, a, totals["baseline_total"])
            bench_locon(folder, args.threads)
        bench_base_aware(folder, plain_s)


if __name__ == "__main__":
    main()
