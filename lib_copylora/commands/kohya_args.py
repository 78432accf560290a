"""kohya's `--network_args key=value ...` and `--optimizer_args key=value ...` read onto our config fields.

Each key either means one of our fields (and is checked here, naming the flag, before any config is built) or is
refused with what it would have changed: nothing a kohya line asks for is dropped quietly.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ..train.errors import TrainConfigError

MAX_ARG_TEXT = 200  # a key=value longer than this is a paste accident, not a setting

# kohya/LyCORIS network_args keys CopyLoRA does not do, with what each would have changed
NETWORK_KEYS_REFUSED = {
    "dropout": "drop LoRA neurons during training", "rank_dropout": "drop LoRA ranks during training",
    "module_dropout": "skip whole LoRA modules during training",
    "block_dims": "give each block its own rank", "block_alphas": "give each block its own alpha",
    "conv_block_dims": "give each block its own conv rank", "conv_block_alphas": "give each block its own conv alpha",
    "down_lr_weight": "scale the learning rate of the down blocks", "mid_lr_weight": "scale the mid block's rate",
    "up_lr_weight": "scale the learning rate of the up blocks",
    "block_lr_zero_threshold": "leave out blocks whose rate weight is small",
    "loraplus_lr_ratio": "train the up weights faster (LoRA+)",
    "loraplus_unet_lr_ratio": "train the UNet's up weights faster (LoRA+)",
    "loraplus_text_encoder_lr_ratio": "train the text encoder's up weights faster (LoRA+)",
    "exclude_patterns": "leave some modules out", "include_patterns": "add modules by name",
    "train_blocks": "train only some blocks", "preset": "pick LyCORIS' module set",
    "use_scalar": "add a learned scalar per module", "train_norm": "train the norm layers too",
    "rescaled": "add a learned rescale", "constraint": "constrain the weights", "constrain": "constrain the weights",
    "wd_on_output": "change DoRA's magnitude axis", "full_matrix": "train a full LoKr matrix",
    "decompose_both": "decompose both LoKr factors", "bypass_mode": "run the modules in bypass mode",
    "rs_lora": "scale by alpha / sqrt(rank)", "unbalanced_factorization": "factorise LoKr unevenly",
    "block_size": "change the block size", "verbose": None,
}
# optimizer_args keys whose value CopyLoRA runs anyway: accepted when the value equals this
OPTIMIZER_NEUTRAL = {"prodigy": {"decouple": True, "use_bias_correction": False, "safeguard_warmup": False,
                                 "d_coef": 1.0}}
NATIVE_KINDS = ("lora", "locon", "loha", "lokr")


def split_pairs(flag: str, items: Optional[list[str]]) -> dict[str, str]:
    """`["a=1", "b=x"]` -> {"a": "1", "b": "x"}; a pair with no '=', an empty key or a key given twice is refused."""
    pairs: dict[str, str] = {}
    for item in items or []:
        if len(item) > MAX_ARG_TEXT:
            raise TrainConfigError(f"{flag}: {item[:40]!r}... is too long for a key=value setting")
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TrainConfigError(f"{flag} {item!r} is not key=value (e.g. {flag} conv_dim=4 conv_alpha=1)")
        if key in pairs:
            raise TrainConfigError(f"{flag}: {key} is given twice ({key}={pairs[key]} and {item})")
        pairs[key] = value.strip()
    return pairs


def number(flag: str, key: str, text: str, whole: bool = False) -> float:
    """A finite number (a whole one where asked), or a one-line refusal naming the flag and key."""
    try:
        value = float(text.strip("()[] "))
    except ValueError:
        value = math.nan if text.lower() in ("nan", "+nan", "-nan") else None
    if value is None or not math.isfinite(value):
        raise TrainConfigError(f"{flag}: {key}={text} is not a finite number")
    if whole and value != int(value):
        raise TrainConfigError(f"{flag}: {key}={text} is not a whole number")
    return int(value) if whole else value


def boolean(flag: str, key: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise TrainConfigError(f"{flag}: {key}={text} is not true or false")


def network_fields(module: str, kind: str, pairs: dict[str, str]) -> dict[str, Any]:
    """NetworkConfig fields from --network_args. `module` is how --network_module was written (networks.lora or one
    of our kinds); `kind` the network kind it means. Returns the fields to set, "kind" included when it changes."""
    flag = "--network_args"
    fields: dict[str, Any] = {}
    for key, text in pairs.items():
        if key in ("conv_dim", "conv_alpha"):
            if kind == "lora" and module != "networks.lora":
                raise TrainConfigError(f"{flag}: {key} adds ResNet and sampler convolutions, which a lora network "
                                       "does not train: use --network_module locon (or networks.lora)")
            name = "conv_rank" if key == "conv_dim" else "conv_alpha"
            fields[name] = number(flag, key, text, whole=(key == "conv_dim"))
        elif key == "algo":
            if text.lower() != kind:
                raise TrainConfigError(f"{flag}: algo={text} disagrees with --network_module {module}; pick the "
                                       f"network with --network_module ({', '.join(NATIVE_KINDS)})")
        elif key in ("use_tucker", "use_cp", "use_conv_cp"):
            fields["use_tucker"] = boolean(flag, key, text)
        elif key == "disable_conv_cp":
            fields["use_tucker"] = not boolean(flag, key, text)
        elif key == "factor":
            fields["lokr_factor"] = number(flag, key, text, whole=True)
        elif key == "dora_wd":
            fields["dora"] = boolean(flag, key, text)
        elif key in ("dropout", "rank_dropout", "module_dropout") and text and number(flag, key, text) == 0:
            continue  # no dropout: what CopyLoRA trains anyway
        elif key in NETWORK_KEYS_REFUSED:
            what = NETWORK_KEYS_REFUSED[key]
            raise TrainConfigError(f"{flag}: {key} would {what or 'change the run'}; CopyLoRA does not do that, "
                                   "so train without it")
        else:
            raise TrainConfigError(f"{flag}: {key} is not a setting CopyLoRA knows (it reads conv_dim, conv_alpha, "
                                   "algo, use_tucker, factor, dora_wd)")
    if module == "networks.lora" and "conv_rank" in fields:
        fields["kind"] = "locon"  # kohya's LoRA with conv_dim is LoCon (LoRA-C3Lier): the same modules, same ranks
        fields.setdefault("conv_alpha", 1.0)  # kohya's networks.lora default when conv_dim is given
    return fields


def optimizer_fields(optimizer: str, pairs: dict[str, str]) -> dict[str, Any]:
    """OptimConfig fields from --optimizer_args (weight_decay, betas, eps); any other key is refused."""
    flag = "--optimizer_args"
    fields: dict[str, Any] = {}
    for key, text in pairs.items():
        if key in ("weight_decay", "eps"):
            fields[key] = number(flag, key, text)
        elif key == "betas":
            parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
            if len(parts) != 2:
                raise TrainConfigError(f"{flag}: betas={text} is not two numbers such as betas=0.9,0.99")
            fields["betas"] = tuple(number(flag, key, p.strip()) for p in parts)
        elif key in OPTIMIZER_NEUTRAL.get(optimizer, {}):
            expected = OPTIMIZER_NEUTRAL[optimizer][key]
            given = boolean(flag, key, text) if isinstance(expected, bool) else number(flag, key, text)
            if given != expected:
                raise TrainConfigError(f"{flag}: {key}={text} would change how {optimizer} steps; CopyLoRA runs "
                                       f"it with {key}={expected}: leave it out")
        else:
            raise TrainConfigError(f"{flag}: {key} is not a setting CopyLoRA's {optimizer} takes (it reads "
                                   "weight_decay, betas, eps); leave it out")
    return fields
