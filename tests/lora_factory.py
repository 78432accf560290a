"""Tiny, seeded LoRA state dicts and LoraFile objects of every kind, for tests.

State dicts are written key by key here (not through our writer), so a reading test checks our reader against the
layouts kohya, LyCORIS and PEFT save. Shapes are small: linear 8 -> 6, conv 4 -> 6 channels with 3x3 kernels.
"""

from __future__ import annotations

from typing import Optional

import torch

from lib_copylora.core.family import Family
from lib_copylora.core.formats import lora_from_state_dict
from lib_copylora.core.lorafile import LoraFile

Tensor = torch.Tensor

# One name per role, as kohya spells it for each family (SD1/SD2: diffusers-style UNet, SDXL: compvis-style).
NAMES = {
    Family.SD1: {
        "te": "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        "linear": "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        "linear2": "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_out_0",
        "conv": "lora_unet_down_blocks_0_resnets_0_conv1",
        "conv2": "lora_unet_up_blocks_1_upsamplers_0_conv",
        "conv1x1": "lora_unet_up_blocks_1_resnets_0_conv_shortcut",
    },
    Family.SDXL: {
        "te": "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
        "te2": "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
        "linear": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "linear2": "lora_unet_output_blocks_2_1_transformer_blocks_1_attn2_to_out_0",
        "conv": "lora_unet_input_blocks_1_0_in_layers_2",
        "conv2": "lora_unet_output_blocks_5_2_conv",
        "conv1x1": "lora_unet_output_blocks_3_0_skip_connection",
    },
}
NAMES[Family.SD2] = NAMES[Family.SD1]
NORM_NAME = "lora_unet_down_blocks_0_resnets_0_norm1"  # SD1/SD2 spelling; 4 channels

LIN_OUT, LIN_IN = 6, 8
CONV_OUT, CONV_IN, K = 6, 4, 3
KINDS = ("lora", "locon", "locon_tucker", "loha", "loha_tucker", "lokr", "lokr_factored", "full", "peft")
# Kinds whose ΔW depends on the base weight (and norm layers, which do not): see `base_checkpoint` for the base.
BASE_KINDS = ("dora", "dora_loha", "oft", "boft", "ia3", "glora")
NORM_ROLE = "norm"


def rand(gen: torch.Generator, *shape: int, scale: float = 0.5) -> Tensor:
    return torch.randn(*shape, generator=gen) * scale


def _alpha(value: float) -> Tensor:
    return torch.tensor(float(value))


def lowrank_tensors(gen, out_dim: int, in_dim: int, rank: int, kernel: Optional[int] = None,
                    tucker: bool = False) -> dict[str, Tensor]:
    """kohya lora_down / lora_up (/ lora_mid) for a linear layer, a k×k conv, or a Tucker conv."""
    if kernel is None:
        return {"lora_down.weight": rand(gen, rank, in_dim), "lora_up.weight": rand(gen, out_dim, rank)}
    if tucker:
        return {"lora_down.weight": rand(gen, rank, in_dim, 1, 1), "lora_mid.weight": rand(gen, rank, rank, kernel,
                                                                                             kernel),
                "lora_up.weight": rand(gen, out_dim, rank, 1, 1)}
    return {"lora_down.weight": rand(gen, rank, in_dim, kernel, kernel),
            "lora_up.weight": rand(gen, out_dim, rank, 1, 1)}


def loha_tensors(gen, out_dim: int, in_dim: int, rank: int, kernel: Optional[int] = None,
                 tucker: bool = False) -> dict[str, Tensor]:
    """LyCORIS LoHa: plain (a conv flattened to out × in·k·k) or Tucker (w?_a (r, out), w?_b (r, in), t? (r, r, k, k))."""
    if tucker:
        return {"hada_w1_a": rand(gen, rank, out_dim), "hada_w1_b": rand(gen, rank, in_dim),
                "hada_t1": rand(gen, rank, rank, kernel, kernel), "hada_w2_a": rand(gen, rank, out_dim),
                "hada_w2_b": rand(gen, rank, in_dim), "hada_t2": rand(gen, rank, rank, kernel, kernel)}
    columns = in_dim * (kernel or 1) ** 2
    return {"hada_w1_a": rand(gen, out_dim, rank), "hada_w1_b": rand(gen, rank, columns),
            "hada_w2_a": rand(gen, out_dim, rank), "hada_w2_b": rand(gen, rank, columns)}


def lokr_tensors(gen, a: int, b: int, c: int, d: int, rank: Optional[int] = None, kernel: Optional[int] = None,
                 factor_w1: bool = False, tucker: bool = False) -> dict[str, Tensor]:
    """LyCORIS LoKr for a (a·b, c·d[, k, k]) weight: w1 (a, c) whole or factorised; w2 whole when rank is None,
    else factorised (a conv flattened to (r, d·k·k)) or Tucker."""
    out = {}
    if factor_w1:
        out.update(lokr_w1_a=rand(gen, a, rank), lokr_w1_b=rand(gen, rank, c))
    else:
        out["lokr_w1"] = rand(gen, a, c)
    kk = () if kernel is None else (kernel, kernel)
    if rank is None:
        out["lokr_w2"] = rand(gen, b, d, *kk)
    elif tucker:
        out.update(lokr_w2_a=rand(gen, rank, b), lokr_w2_b=rand(gen, rank, d), lokr_t2=rand(gen, rank, rank, *kk))
    else:
        out.update(lokr_w2_a=rand(gen, b, rank), lokr_w2_b=rand(gen, rank, d * (kernel or 1) ** 2))
    return out


def _module(name: str, tensors: dict[str, Tensor], alpha: Optional[float]) -> dict[str, Tensor]:
    out = {f"{name}.{k}": v for k, v in tensors.items()}
    if alpha is not None:
        out[f"{name}.alpha"] = _alpha(alpha)
    return out


def _kohya_modules(kind: str, gen, rank: int) -> list[tuple[str, dict[str, Tensor]]]:
    """(role, tensors) pairs for one file of this kind."""
    if kind == "lora":
        return [(role, lowrank_tensors(gen, LIN_OUT, LIN_IN, rank)) for role in ("te", "linear", "linear2")]
    if kind in ("locon", "locon_tucker"):
        tucker = kind == "locon_tucker"
        return [("linear", lowrank_tensors(gen, LIN_OUT, LIN_IN, rank)),
                ("conv", lowrank_tensors(gen, CONV_OUT, CONV_IN, rank, K, tucker)),
                ("conv1x1", lowrank_tensors(gen, CONV_OUT, CONV_IN, rank, 1))]
    if kind in ("loha", "loha_tucker"):
        tucker = kind == "loha_tucker"
        return [("te", loha_tensors(gen, LIN_OUT, LIN_IN, rank)),
                ("conv", loha_tensors(gen, CONV_OUT, CONV_IN, rank, K, tucker)),
                ("conv1x1", loha_tensors(gen, CONV_OUT, CONV_IN, rank, 1))]
    if kind == "lokr":  # whole halves (alpha is ignored by LyCORIS then), and a flattened factorised conv
        return [("linear", lokr_tensors(gen, 2, 3, 2, 4)),
                ("conv", lokr_tensors(gen, 2, 3, 2, 2, rank=rank, kernel=K))]
    if kind == "lokr_factored":
        return [("linear", lokr_tensors(gen, 2, 3, 4, 2, rank=rank, factor_w1=True)),
                ("conv", lokr_tensors(gen, 2, 3, 2, 2, rank=rank, kernel=K, tucker=True))]
    if kind in BASE_KINDS or kind == "norm":
        return _base_kind_modules(kind, gen, rank)
    if kind == "full":
        return [("linear", {"diff": rand(gen, LIN_OUT, LIN_IN), "diff_b": rand(gen, LIN_OUT)}),
                ("conv", {"diff": rand(gen, CONV_OUT, CONV_IN, K, K)})]
    raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")


def _base_kind_modules(kind: str, gen, rank: int) -> list[tuple[str, dict[str, Tensor]]]:
    if kind == "dora":  # LoRA and LoCon with per-input magnitudes, as the WebUI reads them
        return [("te", {**lowrank_tensors(gen, LIN_OUT, LIN_IN, rank), "dora_scale": rand(gen, 1, LIN_IN).abs() + 1}),
                ("linear", {**lowrank_tensors(gen, LIN_OUT, LIN_IN, rank),
                            "dora_scale": rand(gen, 1, LIN_IN).abs() + 1}),
                ("conv", {**lowrank_tensors(gen, CONV_OUT, CONV_IN, rank, K),
                          "dora_scale": rand(gen, 1, CONV_IN, 1, 1).abs() + 1})]
    if kind == "dora_loha":
        return [("linear", {**loha_tensors(gen, LIN_OUT, LIN_IN, rank), "dora_scale": rand(gen, 1, LIN_IN).abs() + 1})]
    if kind == "oft":  # 3 blocks of 2 over 6 output channels; the conv one rescaled
        return [("linear", {"oft_blocks": rand(gen, 3, 2, 2)}),
                ("conv", {"oft_blocks": rand(gen, 2, 3, 3), "rescale": rand(gen, CONV_OUT, 1, 1, 1) + 1})]
    if kind == "boft":
        return [("linear", {"oft_blocks": rand(gen, 1, 3, 2, 2)})]
    if kind == "ia3":
        return [("linear", {"weight": rand(gen, LIN_OUT), "on_input": torch.tensor(0)}),
                ("linear2", {"weight": rand(gen, LIN_IN), "on_input": torch.tensor(1)})]
    if kind == "glora":  # the WebUI's layout: a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r)
        return [("linear", {"a1.weight": rand(gen, rank, LIN_IN), "a2.weight": rand(gen, LIN_IN, rank),
                            "b1.weight": rand(gen, rank, LIN_IN), "b2.weight": rand(gen, LIN_OUT, rank)})]
    return [(NORM_ROLE, {"w_norm": rand(gen, CONV_IN), "b_norm": rand(gen, CONV_IN)})]


def base_checkpoint(family: Family = Family.SD1, *, seed: int = 100) -> dict[str, Tensor]:
    """A tiny single-file checkpoint (compvis keys) holding a weight for every role of NAMES, plus the key that
    tells its family; SD2's text encoder q sits in a fused (3·out, in) in_proj_weight, as OpenCLIP stores it."""
    from lib_copylora.core.checkpoint_keys import checkpoint_key

    gen = torch.Generator().manual_seed(seed)
    shapes = {"te": (LIN_OUT, LIN_IN), "te2": (LIN_OUT, LIN_IN), "linear": (LIN_OUT, LIN_IN),
              "linear2": (LIN_OUT, LIN_IN), "conv": (CONV_OUT, CONV_IN, K, K), "conv2": (CONV_OUT, CONV_IN, K, K),
              "conv1x1": (CONV_OUT, CONV_IN, 1, 1)}
    out: dict[str, Tensor] = {}
    for role, name in NAMES[family].items():
        where = checkpoint_key(name, family)
        shape = shapes[role]
        out[where.key] = rand(gen, shape[0] * (3 if where.third is not None else 1), *shape[1:])
    out[checkpoint_key(NORM_NAME, family).key] = rand(gen, CONV_IN) + 1
    marker = {Family.SD1: "cond_stage_model.transformer.text_model.final_layer_norm.weight",
              Family.SD2: "cond_stage_model.model.ln_final.weight",
              Family.SDXL: "conditioner.embedders.1.model.ln_final.weight"}[family]
    out.setdefault(marker, torch.ones(LIN_IN))
    return out


def peft_state_dict(family: Family = Family.SD1, *, seed: int = 0, rank: int = 4,
                    alpha: Optional[float] = None) -> dict[str, Tensor]:
    """diffusers/PEFT keys (`lora_A` / `lora_B`), text encoder(s) and UNet."""
    gen = torch.Generator().manual_seed(seed)
    unet = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    modules = [f"text_encoder.text_model.encoder.layers.0.self_attn.q_proj", f"unet.{unet}",
               "unet.up_blocks.1.resnets.0.conv1"]
    if family is Family.SDXL:
        modules.append("text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj")
    out: dict[str, Tensor] = {}
    for module in modules:
        kernel = K if module.endswith("conv1") else None
        t = lowrank_tensors(gen, CONV_OUT if kernel else LIN_OUT, CONV_IN if kernel else LIN_IN, rank, kernel)
        out[f"{module}.lora_A.weight"] = t["lora_down.weight"]
        out[f"{module}.lora_B.weight"] = t["lora_up.weight"]
        if alpha is not None:
            out[f"{module}.alpha"] = _alpha(alpha)
    return out


def lora_state_dict(kind: str, family: Family = Family.SD1, *, seed: int = 0, rank: int = 4,
                    alpha: Optional[float] = 2.0) -> dict[str, Tensor]:
    """A small state dict of one kind (see KINDS), with kohya names of the family."""
    if kind == "peft":
        return peft_state_dict(family, seed=seed, rank=rank, alpha=alpha)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for role, tensors in _kohya_modules(kind, gen, rank):
        name = NORM_NAME if role == NORM_ROLE else NAMES[family][role]
        out.update(_module(name, tensors, None if kind in ("full", "norm", "ia3") else alpha))
    return out


def family_metadata(family: Family) -> dict[str, str]:
    return {"ss_base_model_version": family.base_model_version, "ss_v2": str(family is Family.SD2)}


def make_lora(kind: str = "lora", family: Family = Family.SD1, *, seed: int = 0, rank: int = 4,
              alpha: Optional[float] = 2.0) -> LoraFile:
    """A LoraFile of one kind, read through our own reader from `lora_state_dict`."""
    tensors = lora_state_dict(kind, family, seed=seed, rank=rank, alpha=alpha)
    return lora_from_state_dict(tensors, family_metadata(family))
