"""What a LoRA file holds, in words: kinds, family, ranks and alphas, the blocks it touches, its metadata.

Every kind is named per module when the file mixes kinds, ranks or alphas (DoRA as `+DoRA` after the kind it wraps;
OFT by its blocks, IA3 by its scales), and modules whose change depends on the base weight are counted, since
merging them needs the base model.

`describe_lora` gathers the facts into a `LoraDescription`; `format_description` prints them for people and
`description_json` for programs (full metadata values there; shortened ones in the text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from .base_layers import DoraLayer
from .blocks import BLOCK_FORMATS, block_of
from .detect import detect_family
from .family import Family
from .layers import Layer, LayerKind
from .lorafile import LoraFile

_SHORT_VALUE = 80
_LOCON = "LoCon (LoRA with conv layers)"


class ModuleRank(NamedTuple):
    name: str
    kind: str
    rank: str
    alpha: str


@dataclass
class BlockUse:
    count: int  # the format's number of values (26/17 for SD1/SD2, 20/12 for SDXL)
    touched: list[str]  # blocks of this format the file has modules in, in the format's order
    outside: list[str]  # blocks the file touches that this format does not name (it leaves them at 0)


@dataclass
class LoraDescription:
    name: str
    kinds: str
    family: Family
    family_reason: str
    family_assumed: bool
    modules: int
    text_encoder_modules: int
    rank_alpha: Optional[str]  # one line when every module has the same rank and alpha, else None
    per_module: list[ModuleRank]  # filled only when ranks or alphas vary
    blocks: list[BlockUse]
    no_block: list[str]  # modules in no block (time embedding, conv_out, ...)
    metadata: dict[str, str] = field(default_factory=dict)
    unused_keys: list[str] = field(default_factory=list)
    needs_base: list[str] = field(default_factory=list)  # modules whose ΔW depends on the base weight
    dora: int = 0  # modules with a dora_scale
    notes: list[str] = field(default_factory=list)  # what the reader accepted leniently


def _bare(layer: Layer) -> Layer:
    return layer.inner if isinstance(layer, DoraLayer) else layer


def module_label(layer: Layer) -> str:
    """The kind of one module: `LoRA`, `LoHa`, `OFT`, ..., with `+DoRA` when a dora_scale wraps it."""
    return _bare(layer).kind.label + ("+DoRA" if isinstance(layer, DoraLayer) else "")


def kinds_label(lora: LoraFile) -> str:
    bare = [_bare(layer) for layer in lora.layers.values()]
    lowrank = [layer for layer in bare if layer.kind is LayerKind.LORA]
    labels = {layer.kind.label for layer in bare if layer.kind is not LayerKind.LORA}
    if lowrank:
        # kohya's plain LoRA already has 1×1 convs (SD1's proj_in/proj_out); LoCon adds k×k ResNet/sampler convs
        labels.add(_LOCON if any(layer.is_conv and layer.shape[2:] != (1, 1) for layer in lowrank) else "LoRA")
    text = labels.pop() if len(labels) == 1 else "mixed: " + ", ".join(sorted(labels))
    doras = [layer for layer in lora.layers.values() if isinstance(layer, DoraLayer)]
    for key, group in (("PEFT's lora_magnitude_vector", [d for d in doras if d.on_output]),
                       ("dora_scale", [d for d in doras if not d.on_output])):
        if group:
            where = "every module" if len(group) == len(bare) else f"{len(group)} module(s)"
            text += f", with DoRA ({key}) on {where}"
    return text


def _rank_text(layer: Layer) -> tuple[str, str]:
    describe = getattr(_bare(layer), "describe", None)
    if describe is not None:
        return describe()
    if layer.rank is None:
        return "none", "none (scale 1)"
    alpha = "none (scale 1)" if layer.alpha is None else f"{float(layer.alpha):g}"
    return str(layer.rank), alpha


def _is_text_encoder(name: str) -> bool:
    return name.startswith(("lora_te_", "lora_te1_", "lora_te2_"))


def _block_uses(lora: LoraFile) -> tuple[list[BlockUse], list[str]]:
    touched: set[str] = set()
    no_block: list[str] = []
    for name in lora.layers:
        block = block_of(name, lora.family)
        if block is None:
            no_block.append(name)
        else:
            touched.add(block)
    uses = []
    formats = sorted(BLOCK_FORMATS[lora.family], key=lambda fmt: -fmt.count)
    every = formats[0].blocks
    for fmt in formats:
        uses.append(BlockUse(fmt.count, [b for b in fmt.blocks if b in touched],
                             [b for b in every if b in touched and b not in fmt.blocks]))
    return uses, no_block


def describe_lora(lora: LoraFile) -> LoraDescription:
    guess = detect_family(lora.layers, lora.metadata)
    per_module = [ModuleRank(name, module_label(layer), *_rank_text(layer)) for name, layer in lora.layers.items()]
    distinct = {(kind, rank, alpha) for _, kind, rank, alpha in per_module}
    rank_alpha = None
    if len(distinct) == 1:
        _, rank, alpha = distinct.pop()
        rank_alpha = f"{_rank_words(rank)}, alpha {alpha}"
    blocks, no_block = _block_uses(lora)
    return LoraDescription(
        name=lora.name, kinds=kinds_label(lora), family=lora.family,
        family_reason=guess.reason if guess.family is lora.family else "given by the caller",
        family_assumed=guess.assumed and guess.family is lora.family, modules=len(lora.layers),
        text_encoder_modules=sum(_is_text_encoder(n) for n in lora.layers), rank_alpha=rank_alpha,
        per_module=[] if rank_alpha else per_module, blocks=blocks, no_block=no_block,
        metadata=dict(lora.metadata), unused_keys=list(lora.unused_keys), needs_base=lora.needs_base,
        dora=sum(isinstance(layer, DoraLayer) for layer in lora.layers.values()), notes=list(lora.notes),
    )


def _rank_words(rank: str) -> str:
    """`rank 4` for ranks (and `rank none`); kinds without one describe themselves (`3 blocks of 2`)."""
    return f"rank {rank}" if rank.isdigit() or rank == "none" else rank


def shorten(value: str, limit: int = _SHORT_VALUE) -> str:
    flat = " ".join(value.split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit - 1]}… ({len(value)} chars)"


def _block_lines(desc: LoraDescription) -> list[str]:
    lines = []
    for use in desc.blocks:
        text = " ".join(use.touched) or "(none)"
        if use.outside:
            text += f"   [not in this format, so left at 0: {' '.join(use.outside)}]"
        lines.append(f"  {use.count:>2} values: {text}")
    if desc.no_block:
        lines.append(f"  in no block: {len(desc.no_block)} module(s), e.g. {desc.no_block[0]}")
    return lines


def format_description(desc: LoraDescription) -> str:
    family = f"{desc.family.label} ({desc.family_reason})"
    unet = desc.modules - desc.text_encoder_modules
    lines = [
        f"file:    {desc.name}",
        f"kind:    {desc.kinds}",
        f"family:  {family}",
        f"modules: {desc.modules} ({desc.text_encoder_modules} text encoder, {unet} UNet)",
    ]
    if desc.rank_alpha:
        lines.append(f"rank:    {desc.rank_alpha}")
    else:
        lines.append("rank:    varies by module")
        lines += [f"  {name}: {kind}, {_rank_words(rank)}, alpha {alpha}"
                  for name, kind, rank, alpha in desc.per_module]
    if desc.needs_base:
        lines.append(f"base:    {len(desc.needs_base)} module(s) change with the weight they modify (DoRA, OFT, "
                     "IA3, GLoRA): merging them needs the base model (merge --base CHECKPOINT)")
    lines += [f"note:    {note}" for note in desc.notes]
    lines.append("blocks:")
    lines += _block_lines(desc)
    if desc.unused_keys:
        lines.append(f"unused keys: {len(desc.unused_keys)}, e.g. {', '.join(desc.unused_keys[:5])}")
    lines.append("metadata:" + ("" if desc.metadata else " (none)"))
    lines += [f"  {key}: {shorten(desc.metadata[key])}" for key in sorted(desc.metadata)]
    return "\n".join(lines)


def description_json(desc: LoraDescription) -> dict:
    return {
        "name": desc.name,
        "kind": desc.kinds,
        "family": desc.family.value,
        "family_reason": desc.family_reason,
        "family_assumed": desc.family_assumed,
        "modules": desc.modules,
        "text_encoder_modules": desc.text_encoder_modules,
        "rank_alpha": desc.rank_alpha,
        "per_module": [m._asdict() for m in desc.per_module],
        "blocks": {str(use.count): {"touched": use.touched, "outside_format": use.outside} for use in desc.blocks},
        "no_block": desc.no_block,
        "metadata": dict(sorted(desc.metadata.items())),
        "unused_keys": desc.unused_keys,
        "needs_base": desc.needs_base,
        "dora_modules": desc.dora,
        "notes": desc.notes,
    }
