"""The alwayson script's work for `<lora:name:w:blocks>` prompts (docs/architecture.md §7).

process() / before_process_batch(): rewrite our forms into `lbw=` before the built-in parser sees them.
after_extra_networks_activate(): scale the loaded networks per block, report problems in the generation's comment
and the console, and record the weights in the infotext.
"""

from __future__ import annotations

import logging
from typing import Optional

from ..core import lora_tags
from ..core.presets import load_presets
from . import compat
from .block_apply import BlockReport, apply_block_weights
from .forge_blocks import apply_forge_block_weights
from .paths import preset_path

log = logging.getLogger("copylora")
INFOTEXT_KEY = "CopyLoRA block weights"
PROBLEMS_KEY = "CopyLoRA problems"  # also in the infotext: the API's answer carries no comments
LORA_NETWORK_NAMES = ("lora", "lyco")


class PresetCache:
    """The preset file, re-read only when it changes on disk (the hook runs for every batch)."""

    def __init__(self):
        self._stamp: Optional[tuple] = None
        self._presets: dict = {}

    def get(self) -> dict:
        path = preset_path()
        try:
            stat = path.stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = (str(path), None, None)
        if stamp != self._stamp:
            self._presets = load_presets(path)
            self._stamp = stamp
        return self._presets


def _rewrite_list(prompts, warnings: list[str]) -> None:
    if not prompts:
        return
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            prompts[i], found = lora_tags.rewrite_prompt(prompt)
            warnings.extend(found)


def specs_from(extra_network_data) -> dict[str, str]:
    """`lbw=` specs by the LoRA name used in the prompt, from the WebUI's parsed extra-network data."""
    specs: dict[str, str] = {}
    for network_name in LORA_NETWORK_NAMES:
        for params in (extra_network_data or {}).get(network_name, []):
            if params.positional and "lbw" in params.named:
                specs[params.positional[0]] = params.named["lbw"]
    return specs


class BlockWeightHook:
    def __init__(self):
        self.presets = PresetCache()
        self.warned_lbw = False

    def process(self, p) -> None:
        warnings: list[str] = []
        _rewrite_list(p.all_prompts, warnings)
        _rewrite_list(getattr(p, "all_hr_prompts", None), warnings)
        self._report(p, warnings)
        self._warn_about_lbw_extension()

    def before_process_batch(self, p, prompts=None, **_) -> None:
        # idempotent second pass: other scripts may have added tags after process()
        warnings: list[str] = []
        _rewrite_list(prompts, warnings)
        self._report(p, warnings)

    def after_extra_networks_activate(self, p, extra_network_data=None, **_) -> None:
        from modules import shared

        networks = compat.builtin_lora()
        if networks is None:
            return
        try:
            family = compat.model_family(shared.sd_model)
        except compat.UnsupportedModel:
            family = None  # each LoRA given block weights says so in one line (block_apply.decide)
        try:
            presets = self.presets.get()
        except Exception as exc:  # a broken preset file must not stop generation
            self._report(p, [f"block-weight presets could not be read: {exc}"])
            presets = {}
        if compat.is_forge():  # Forge keeps patches, not modules: scale their strengths there
            report = apply_forge_block_weights(shared.sd_model, networks.loaded_networks,
                                               specs_from(extra_network_data), family, presets)
        else:
            report = apply_block_weights(networks.loaded_networks, specs_from(extra_network_data), family, presets)
        self._report(p, report.problems)
        self._record(p, report)

    def _report(self, p, problems: list[str]) -> None:
        for problem in problems:
            message = f"CopyLoRA: {problem}"
            p.comment(message)
            log.warning(message)
        if problems:
            known = p.extra_generation_params.get(PROBLEMS_KEY, "")
            fresh = [x for x in problems if x not in known]
            p.extra_generation_params[PROBLEMS_KEY] = " | ".join(filter(None, [known, *fresh]))

    @staticmethod
    def _record(p, report: BlockReport) -> None:
        if report.applied:
            p.extra_generation_params[INFOTEXT_KEY] = "; ".join(
                f"{name}: {weights.describe()}" for name, weights in report.applied.items()
            )

    def _warn_about_lbw_extension(self) -> None:
        if not self.warned_lbw and compat.lbw_extension_active():
            self.warned_lbw = True
            log.warning(
                "CopyLoRA: the LoRA Block Weight extension is also active; both read lbw= and would scale the "
                "same LoRA twice. Disable one of them in Extensions."
            )

