"""The ordered registry of format adapters.

Each adapter is a small module with `NAME`, `find_modules(keys) -> [module]` (the modules whose keys look like its
format) and `load(module, tensors) -> (kohya_name, layer) | None`, which pops every key it uses from `tensors` and
returns None, touching nothing, when the module's keys are incomplete. Adapters are asked in the order below and
the first that loads a module wins; whatever keys are left at the end were used by no one.

DoRA is not a format of its own but a `dora_scale` beside any kind (as the WebUI reads it): once an adapter has
loaded a module, its `dora_scale` key, if any, wraps the layer in a DoraLayer.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from ..base_layers import DoraLayer
from ..errors import FormatError
from ..layers import Layer
from . import full, glora, ia3, kohya_lora, loha, lokr, norm, oft, peft
from .common import pop


class FormatAdapter(NamedTuple):
    name: str
    find_modules: Callable[[list[str]], list[str]]
    load: Callable[[str, dict[str, torch.Tensor]], Optional[tuple[str, Layer]]]


def _adapter(module) -> FormatAdapter:
    return FormatAdapter(module.NAME, module.find_modules, module.load)


ADAPTERS: tuple[FormatAdapter, ...] = tuple(
    _adapter(m) for m in (kohya_lora, loha, lokr, full, norm, oft, ia3, glora, peft))


class Collected(NamedTuple):
    layers: dict[str, Layer]
    formats: list[str]  # names of the adapters that loaded at least one module
    leftover: list[str]  # keys no adapter used, in file order


def collect_layers(tensors: dict[str, torch.Tensor]) -> Collected:
    """Turn a state dict into layers keyed by kohya module name. The input dict is not modified."""
    remaining = dict(tensors)
    layers: dict[str, Layer] = {}
    formats: list[str] = []
    for adapter in ADAPTERS:
        loaded = 0
        for module in adapter.find_modules(list(remaining)):
            result = adapter.load(module, remaining)
            if result is None:
                continue
            name, layer = result
            magnitude = pop(remaining, module + ".dora_scale")
            if magnitude is not None:
                if isinstance(layer, DoraLayer):
                    raise FormatError(f"module {name} has two DoRA magnitudes ({module}.dora_scale and PEFT's "
                                      "lora_magnitude_vector): keep one")
                layer = DoraLayer(layer, magnitude)
            if name in layers:
                raise FormatError(f"module {name} is stored twice (second time as {adapter.name} keys of {module})")
            layers[name] = layer
            loaded += 1
        if loaded:
            formats.append(adapter.name)
    return Collected(layers, formats, list(remaining))


def describe_leftovers(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} key(s) belong to no known LoRA format: {shown}{more}"
