"""The kohya-style metadata other tools read from a LoRA, and our own recipe under the single key `copylora`.

Formats follow kohya's sd-scripts (every value a string): `ss_network_dim` "8", `ss_network_alpha` "1.0",
`ss_v2` "True"/"False", `ss_network_args` a JSON object of strings (`conv_dim`, `conv_alpha`, and `algo` for
LyCORIS). Where ranks or alphas differ between modules we write "Dynamic", as kohya's resize script does. The WebUI
reads `ss_output_name` (the card's name), `ss_base_model_version` and `ss_v2` (which model the card belongs to) and
`sshs_model_hash` (the hash in infotext); the hashes are added when the file is written.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

from .family import Family
from .layers import LayerKind
from .lorafile import LoraFile

RECIPE_KEY = "copylora"
DYNAMIC = "Dynamic"
_ALGO = {LayerKind.LOHA: "loha", LayerKind.LOKR: "lokr", LayerKind.FULL: "full", LayerKind.LORA: "locon",
         LayerKind.NORM: "full", LayerKind.OFT: "diag-oft", LayerKind.BOFT: "boft", LayerKind.IA3: "ia3",
         LayerKind.GLORA: "glora"}


def _uniform(values: Iterable[str]) -> Optional[str]:
    distinct = set(values)
    if not distinct:
        return None
    return distinct.pop() if len(distinct) == 1 else DYNAMIC


def _alpha_text(layer) -> str:
    # A missing alpha means scale 1, i.e. alpha equal to the rank, which is how kohya's loaders read it.
    alpha = layer.alpha if layer.alpha is not None else layer.rank
    return str(float(alpha))


def _algo(kinds: set[LayerKind]) -> str:
    lycoris = kinds - {LayerKind.LORA}
    if not lycoris:
        return _ALGO[LayerKind.LORA]
    if len(lycoris) == 1:
        return _ALGO[next(iter(lycoris))]
    # mixed LyCORIS kinds have no single algo; name them all so a reader at least sees what is inside
    return ",".join(sorted(_ALGO[k] for k in lycoris))


def network_fields(lora: LoraFile) -> dict[str, str]:
    """ss_network_module / _dim / _alpha / _args describing the layers as they are now."""
    ranked = [(n, l) for n, l in lora.layers.items() if l.rank is not None]
    linear = [l for _, l in ranked if not l.is_conv]
    conv = [l for _, l in ranked if l.is_conv]
    main = linear or conv
    fields: dict[str, str] = {}
    dim = _uniform(str(l.rank) for l in main)
    if dim is not None:
        fields["ss_network_dim"] = dim
        fields["ss_network_alpha"] = _uniform(_alpha_text(l) for l in main)
    args: dict[str, str] = {}
    if linear and conv:
        args["conv_dim"] = _uniform(str(l.rank) for l in conv)
        args["conv_alpha"] = _uniform(_alpha_text(l) for l in conv)
    kinds = lora.kinds
    if any(hasattr(layer, "magnitude") for layer in lora.layers.values()):
        args["dora_wd"] = "True"  # LyCORIS' name for weight decomposition (DoRA)
    if kinds <= {LayerKind.LORA} and "dora_wd" not in args:
        fields["ss_network_module"] = "networks.lora"
    else:
        fields["ss_network_module"] = "lycoris.kohya"
        args["algo"] = _algo(kinds)
    if args:
        fields["ss_network_args"] = json.dumps(args)
    return fields


def standard_metadata(lora: LoraFile, output_name: str) -> dict[str, str]:
    family: Family = lora.family
    fields = {
        "ss_output_name": output_name,
        "ss_base_model_version": family.base_model_version,
        "ss_v2": str(family is Family.SD2),
    }
    fields.update(network_fields(lora))
    return fields


def with_recipe(metadata: dict[str, str], recipe: dict) -> dict[str, str]:
    """A copy of `metadata` with `recipe` stored as JSON under `copylora` (sorted keys: reproducible bytes)."""
    out = dict(metadata)
    out[RECIPE_KEY] = json.dumps(recipe, sort_keys=True, ensure_ascii=False)
    return out


def read_recipe(metadata: dict[str, str]) -> Optional[dict]:
    text = metadata.get(RECIPE_KEY)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
