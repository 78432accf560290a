"""Module names in the schemes a LoRA meets: diffusers paths, compvis (original SD) paths, the WebUI's layer names.

- A kohya module name is `<prefix>_<module path with dots as underscores>`; prefixes `lora_unet`, `lora_te` (SD1/SD2),
  `lora_te1` / `lora_te2` (SDXL). kohya writes SD1/SD2 UNet names in diffusers style
  (`lora_unet_down_blocks_0_attentions_0_proj_in`) and SDXL UNet names in compvis style
  (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`).
- The UNet layout behind the index arithmetic: each down level holds 2 layers (resnet, plus attention where the
  level has one) and then, except the last level, a downsampler, so compvis `input_blocks` go 1 + 3·level + layer,
  with the downsampler at 3·level + 3 and `conv_in` at 0. Each up level holds 3 layers and (except the last) an
  upsampler that sits in the last layer's block (`output_blocks.3·level+2`) after the resnet and, where the level
  has attention, after the attention too.
  SD1/SD2 have 4 levels (no attention in down level 3 or up level 0); SDXL has 3 (no attention in down level 0 or up
  level 2, 10 transformer blocks at the deepest level). Attention internals are named alike in both schemes.
"""

from __future__ import annotations

import enum

from typing import NamedTuple

from .errors import FormatError
from .family import Family

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIXES = ("lora_te", "lora_te1", "lora_te2")
PREFIXES = (UNET_PREFIX, *TEXT_ENCODER_PREFIXES)
STYLES = ("diffusers", "compvis")

# Attribute names that contain an underscore, so a kohya name can be split back into a dotted path. They cover the
# diffusers and compvis UNets of SD1/SD2/SDXL and the transformers CLIP text models (tests round-trip every module).
_COMPOUND_NAMES = frozenset({
    # diffusers UNet
    "down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "conv_norm_out", "time_embedding",
    "add_embedding", "linear_1", "linear_2", "transformer_blocks", "proj_in", "proj_out", "to_q", "to_k", "to_v",
    "to_out", "time_emb_proj", "conv_shortcut",
    # compvis UNet
    "input_blocks", "output_blocks", "middle_block", "time_embed", "label_emb", "in_layers", "out_layers",
    "emb_layers", "skip_connection",
    # CLIP text encoders (transformers)
    "text_model", "token_embedding", "position_embedding", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj",
    "layer_norm1", "layer_norm2", "final_layer_norm", "text_projection",
})
_LONGEST_COMPOUND = max(name.count("_") + 1 for name in _COMPOUND_NAMES)

_DIFFUSERS_HEADS = frozenset({"down_blocks", "up_blocks", "mid_block", "conv_in", "conv_out", "conv_norm_out",
                              "time_embedding", "add_embedding"})
_COMPVIS_HEADS = frozenset({"input_blocks", "output_blocks", "middle_block", "time_embed", "label_emb", "out"})

# Leaf modules outside the down/mid/up blocks: (diffusers, compvis, SDXL only).
_TOP_LEVEL = (
    ("conv_in", "input_blocks.0.0", False),
    ("time_embedding.linear_1", "time_embed.0", False),
    ("time_embedding.linear_2", "time_embed.2", False),
    ("add_embedding.linear_1", "label_emb.0.0", True),
    ("add_embedding.linear_2", "label_emb.0.2", True),
    ("conv_norm_out", "out.0", False),
    ("conv_out", "out.2", False),
)

# Inside a resnet, diffusers names its layers; compvis keeps them in Sequentials (activations fill the gaps).
_RESNET_INNER = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)

# A spatial transformer's children, alike in both schemes; checking them catches an upsampler index off by one.
_ATTENTION_CHILDREN = frozenset({"norm", "proj_in", "proj_out", "transformer_blocks"})

DOWN_LAYERS = 2  # resnets (and attentions) per down level, in every family here
UP_LAYERS = 3


class UnetLayout(NamedTuple):
    levels: int
    down_attention: tuple[bool, ...]  # per level: does it hold attentions?
    up_attention: tuple[bool, ...]

    def upsampler_slot(self, level: int) -> int:
        """Position of the upsampler inside `output_blocks.3·level+2`: after the resnet, and the attention if any."""
        return 2 if self.up_attention[level] else 1


def compvis_block(down: bool, level: int, layer: int) -> int:
    """The `input_blocks` (down) / `output_blocks` (up) index of diffusers layer `layer` of `level`; the down
    sampler sits where a third down layer would (layer 2), the up sampler in the level's third block."""
    return 3 * level + layer + 1 if down else 3 * level + layer


_SD_LAYOUT = UnetLayout(4, (True, True, True, False), (False, True, True, True))
UNET_LAYOUTS = {
    Family.SD1: _SD_LAYOUT,
    Family.SD2: _SD_LAYOUT,
    Family.SDXL: UnetLayout(3, (False, True, True), (True, True, False)),
}


class _NotAModule(Exception):
    """Internal: the path does not name a module of this UNet; public functions turn it into FormatError."""


def kohya_name(prefix: str, module_path: str) -> str:
    """`kohya_name("lora_unet", "down_blocks.0.resnets.0.conv1")` -> `lora_unet_down_blocks_0_resnets_0_conv1`."""
    if prefix not in PREFIXES:
        raise FormatError(f"unknown kohya prefix {prefix!r}; use one of {', '.join(PREFIXES)}")
    return f"{prefix}_{module_path.replace('.', '_')}"


def path_from_underscores(text: str) -> str:
    """Undo kohya's dots-to-underscores for module paths made of the known attribute names."""
    tokens = text.split("_")
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        for width in range(min(_LONGEST_COMPOUND, len(tokens) - i), 0, -1):
            candidate = "_".join(tokens[i:i + width])
            if width == 1 or candidate in _COMPOUND_NAMES:
                parts.append(candidate)
                i += width
                break
    return ".".join(parts)


def split_kohya_name(name: str) -> tuple[str, str]:
    """`lora_unet_conv_in` -> (`lora_unet`, `conv_in`): the prefix and the dotted module path."""
    for prefix in PREFIXES:
        if name.startswith(prefix + "_") and len(name) > len(prefix) + 1:
            return prefix, path_from_underscores(name[len(prefix) + 1:])
    raise FormatError(f"{name!r} is not a kohya module name; it should start with one of {', '.join(PREFIXES)}")


def unet_path_style(path: str) -> str:
    """"diffusers" or "compvis", from the path's first component."""
    head = path.split(".", 1)[0]
    if head in _DIFFUSERS_HEADS:
        return "diffusers"
    if head in _COMPVIS_HEADS:
        return "compvis"
    raise FormatError(f"{path!r} is not a UNet module path in diffusers or compvis style")


def _index(parts: list[str], position: int, limit: int) -> int:
    if position >= len(parts) or not parts[position].isdigit():
        raise _NotAModule
    value = int(parts[position])
    if value >= limit:
        raise _NotAModule
    return value


def _join(*parts: object) -> str:
    return ".".join(str(p) for p in parts)


def _convert_resnet_inner(rest: list[str], to_compvis: bool) -> list[str]:
    if not rest:
        return []
    for diffusers, compvis in _RESNET_INNER:
        source, target = (diffusers, compvis) if to_compvis else (compvis, diffusers)
        source_parts = source.split(".")
        if rest[:len(source_parts)] == source_parts:
            return target.split(".") + rest[len(source_parts):]
    raise _NotAModule


def _attention_inner(rest: list[str]) -> list[str]:
    if rest and rest[0] not in _ATTENTION_CHILDREN:
        raise _NotAModule
    return rest


def _sampler_tail(rest: list[str], expected: str, written: str) -> list[str]:
    """Samplers hold one conv; diffusers calls it `conv`, compvis `op` (down) or `conv` (up)."""
    if rest == []:
        return []
    if rest == [expected]:
        return [written]
    raise _NotAModule


def _diffusers_to_compvis(parts: list[str], layout: UnetLayout) -> str:
    head = parts[0]
    if head in ("down_blocks", "up_blocks"):
        level = _index(parts, 1, layout.levels)
        kind = parts[2] if len(parts) > 2 else ""
        down = head == "down_blocks"
        has_attention = (layout.down_attention if down else layout.up_attention)[level]
        if kind in ("resnets", "attentions"):
            layer = _index(parts, 3, DOWN_LAYERS if down else UP_LAYERS)
            block = compvis_block(down, level, layer)
            rest = parts[4:]
            if kind == "resnets":
                return _join("input_blocks" if down else "output_blocks", block, 0, *_convert_resnet_inner(rest, True))
            if not has_attention:
                raise _NotAModule
            return _join("input_blocks" if down else "output_blocks", block, 1, *_attention_inner(rest))
        if kind == ("downsamplers" if down else "upsamplers") and level < layout.levels - 1:
            _index(parts, 3, 1)
            if down:
                return _join("input_blocks", compvis_block(True, level, 2), 0, *_sampler_tail(parts[4:], "conv", "op"))
            slot = layout.upsampler_slot(level)
            return _join("output_blocks", compvis_block(False, level, 2), slot,
                         *_sampler_tail(parts[4:], "conv", "conv"))
        raise _NotAModule
    if head == "mid_block":
        kind = parts[1] if len(parts) > 1 else ""
        if kind == "resnets":
            layer = _index(parts, 2, 2)
            return _join("middle_block", 2 * layer, *_convert_resnet_inner(parts[3:], True))
        if kind == "attentions":
            _index(parts, 2, 1)
            return _join("middle_block", 1, *_attention_inner(parts[3:]))
    raise _NotAModule


def _compvis_to_diffusers(parts: list[str], layout: UnetLayout) -> str:
    head = parts[0]
    if head == "input_blocks":
        block = _index(parts, 1, 3 * layout.levels)
        slot = _index(parts, 2, 2)
        if block == 0:
            raise _NotAModule  # conv_in, handled with the top-level leaves
        level, layer = divmod(block - 1, 3)
        rest = parts[3:]
        if layer == 2:
            if level >= layout.levels - 1 or slot != 0:
                raise _NotAModule
            return _join("down_blocks", level, "downsamplers", 0, *_sampler_tail(rest, "op", "conv"))
        if slot == 0:
            return _join("down_blocks", level, "resnets", layer, *_convert_resnet_inner(rest, False))
        if not layout.down_attention[level]:
            raise _NotAModule
        return _join("down_blocks", level, "attentions", layer, *_attention_inner(rest))
    if head == "output_blocks":
        level, layer = divmod(_index(parts, 1, 3 * layout.levels), 3)
        slot = _index(parts, 2, 3)
        rest = parts[3:]
        if slot == 0:
            return _join("up_blocks", level, "resnets", layer, *_convert_resnet_inner(rest, False))
        if slot == 1 and layout.up_attention[level]:
            return _join("up_blocks", level, "attentions", layer, *_attention_inner(rest))
        if layer == 2 and level < layout.levels - 1 and slot == layout.upsampler_slot(level):
            return _join("up_blocks", level, "upsamplers", 0, *_sampler_tail(rest, "conv", "conv"))
        raise _NotAModule
    if head == "middle_block":
        slot = _index(parts, 1, 3)
        if slot == 1:
            return _join("mid_block", "attentions", 0, *_attention_inner(parts[2:]))
        return _join("mid_block", "resnets", slot // 2, *_convert_resnet_inner(parts[2:], False))
    raise _NotAModule


def _convert(path: str, family: Family, to_compvis: bool) -> str:
    for diffusers, compvis, sdxl_only in _TOP_LEVEL:
        source, target = (diffusers, compvis) if to_compvis else (compvis, diffusers)
        if path == source and (family is Family.SDXL or not sdxl_only):
            return target
    try:
        parts = path.split(".")
        layout = UNET_LAYOUTS[family]
        return _diffusers_to_compvis(parts, layout) if to_compvis else _compvis_to_diffusers(parts, layout)
    except _NotAModule:
        style = "diffusers" if to_compvis else "compvis"
        raise FormatError(f"{path!r} is not a {style}-style module path of the {family.label} UNet") from None


def unet_path_diffusers_to_compvis(path: str, family: Family) -> str:
    """`down_blocks.0.attentions.0.proj_in` -> `input_blocks.1.1.proj_in` (SD1); FormatError if no such module."""
    return _convert(path, family, to_compvis=True)


def unet_path_compvis_to_diffusers(path: str, family: Family) -> str:
    """`input_blocks.1.0.in_layers.2` -> `down_blocks.0.resnets.0.conv1` (SD1); FormatError if no such module."""
    return _convert(path, family, to_compvis=False)


def file_style(family: Family) -> str:
    """The UNet naming style kohya writes for a family: diffusers for SD1/SD2, compvis for SDXL."""
    return "compvis" if family is Family.SDXL else "diffusers"


def kohya_unet_name(path: str, family: Family, style: str) -> str:
    """The `lora_unet_...` name kohya writes for the UNet module at `path` (given in `style`)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    other = _convert(path, family, to_compvis=style == "diffusers")  # also checks that the module exists
    return kohya_name(UNET_PREFIX, path if style == file_style(family) else other)


# --- The WebUI's built-in Lora (v1.10.1) ------------------------------------------------------------------------------
# It names every module `<path with underscores>` under a root: `diffusion_model_` for the UNet; for text encoders
# `transformer_` (SD1, transformers CLIP), `model_` (SD2, OpenCLIP), `0_transformer_` / `1_model_` (SDXL's two).
# OpenCLIP fuses q/k/v into one MultiheadAttention `..._attn` (its `in_proj_weight`); the WebUI keeps a kohya file's
# q, k and v as three network modules keyed `..._attn_q_proj` / `_k_proj` / `_v_proj` and adds them into that one
# weight. Those keys are what we return for q/k/v: they are not entries of `network_layer_mapping` (the fused layer
# `..._attn` is), but they are the keys of the loaded network's modules, one per kohya module. A bare `..._attn` maps
# back to None, since three kohya modules share it. Names the WebUI does not match (SD2/SDXL-te2 layer norms and
# embeddings, SD1 `lora_te_` modules outside the encoder layers) also give None: the WebUI does not apply them.
_WEBUI_UNET_ROOT = "diffusion_model_"
_OPENCLIP_RENAMES = (("self_attn_", "attn_"), ("mlp_fc1", "mlp_c_fc"), ("mlp_fc2", "mlp_c_proj"))
_OPENCLIP_LAYER_TAILS = ("attn_q_proj", "attn_k_proj", "attn_v_proj", "attn_out_proj", "mlp_c_fc", "mlp_c_proj")
_ENCODER_LAYERS = "text_model_encoder_layers_"


def _openclip_tail(layer_tail: str) -> str | None:
    """`3_self_attn_q_proj` (kohya, after `encoder_layers_`) -> `3_attn_q_proj` (OpenCLIP), None if not matched."""
    number, _, inner = layer_tail.partition("_")
    if not number.isdigit():
        return None
    for kohya, openclip in _OPENCLIP_RENAMES:
        if inner.startswith(kohya):
            inner = openclip + inner[len(kohya):]
            break
    return f"{number}_{inner}" if inner in _OPENCLIP_LAYER_TAILS else None


def _kohya_tail_from_openclip(openclip_tail: str) -> str | None:
    number, _, inner = openclip_tail.partition("_")
    if not number.isdigit() or inner not in _OPENCLIP_LAYER_TAILS:
        return None
    for kohya, openclip in _OPENCLIP_RENAMES:
        if inner.startswith(openclip):
            return f"{number}_{kohya}{inner[len(openclip):]}"
    return None


def _webui_text_encoder_name(prefix: str, rest: str, family: Family) -> str | None:
    if family is Family.SD1 and prefix == "lora_te1" and rest.startswith("text_model_"):
        return "transformer_" + rest  # some SD1 files use te1; the WebUI retries them under `transformer_`
    if family is Family.SD1 and prefix == "lora_te" and rest.startswith(_ENCODER_LAYERS):
        return "transformer_" + rest
    if family is Family.SDXL and prefix == "lora_te1" and rest.startswith("text_model_"):
        return "0_transformer_" + rest
    openclip_root = {(Family.SD2, "lora_te"): "model_", (Family.SDXL, "lora_te2"): "1_model_"}.get((family, prefix))
    if openclip_root is not None and rest.startswith(_ENCODER_LAYERS):
        tail = _openclip_tail(rest[len(_ENCODER_LAYERS):])
        return None if tail is None else f"{openclip_root}transformer_resblocks_{tail}"
    return None


def webui_layer_name(kohya_name: str, family: Family) -> str | None:
    """The name the WebUI's built-in Lora gives the module a kohya name targets, or None where it applies none."""
    try:
        prefix, path = split_kohya_name(kohya_name)
    except FormatError:
        return None
    if prefix != UNET_PREFIX:
        return _webui_text_encoder_name(prefix, kohya_name[len(prefix) + 1:], family)
    try:
        if unet_path_style(path) == "diffusers":
            compvis = unet_path_diffusers_to_compvis(path, family)
        else:
            unet_path_compvis_to_diffusers(path, family)  # only to check that the module exists
            compvis = path
    except FormatError:
        return None
    return _WEBUI_UNET_ROOT + compvis.replace(".", "_")


def kohya_name_from_webui_layer(layer_name: str, family: Family) -> str | None:
    """The kohya name (in the style kohya writes for `family`) of a WebUI layer name; None if there is none."""
    if layer_name.startswith(_WEBUI_UNET_ROOT):
        path = path_from_underscores(layer_name[len(_WEBUI_UNET_ROOT):])
        try:
            return kohya_unet_name(path, family, "compvis")
        except FormatError:
            return None
    clip_roots = {Family.SD1: ("transformer_text_model_", "lora_te"),
                  Family.SDXL: ("0_transformer_text_model_", "lora_te1")}
    if family in clip_roots:
        root, prefix = clip_roots[family]
        if layer_name.startswith(root):
            return f"{prefix}_text_model_{layer_name[len(root):]}"
    openclip = {Family.SD2: ("model_transformer_resblocks_", "lora_te"),
                Family.SDXL: ("1_model_transformer_resblocks_", "lora_te2")}
    if family in openclip:
        root, prefix = openclip[family]
        if layer_name.startswith(root):
            tail = _kohya_tail_from_openclip(layer_name[len(root):])
            return None if tail is None else f"{prefix}_{_ENCODER_LAYERS}{tail}"
    return None


class Component(enum.Enum):
    TEXT_ENCODER = "te"
    UNET = "unet"


def component_of(name: str) -> "Component | None":
    """Which network a kohya module name belongs to, by its prefix (`lora_unet_`, `lora_te_`, `lora_te1_`, …)."""
    prefix = "_".join(name.split("_", 2)[:2])
    if prefix == UNET_PREFIX:
        return Component.UNET
    if prefix in TEXT_ENCODER_PREFIXES:
        return Component.TEXT_ENCODER
    return None
