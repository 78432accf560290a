"""`<lora:...>` prompt tags as text: find them, move block-weight specs into `lbw=`, and edit them for X/Y/Z.

The WebUI's own parser splits a tag's text on ':' and reads the second and third positional items as the
text-encoder and UNet strengths with `float()`. Our forms put a block-weight spec third (`<lora:n:0.8:face>`,
`<lora:n:0.8:1,0,0,...>`), which that `float()` rejects, dropping every LoRA of the generation. Rewriting the spec
into the named item `lbw=`, which the built-in parser ignores and the LoRA Block Weight extension also reads, keeps
the tag valid, keeps the spec in the prompt (so the conditioning cache and infotext follow it) and is idempotent.
Pure text: no WebUI import, tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

TAG_RE = re.compile(r"<(lora|lyco):([^>]+)>")
SPEC_KEY = "lbw"


@dataclass
class LoraTag:
    """One `<lora:...>` tag split as the WebUI splits it: `positional` keeps items without exactly one '='."""

    kind: str
    positional: list[str]
    named: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""

    @property
    def block_spec(self) -> Optional[str]:
        return self.named.get(SPEC_KEY)

    def text(self) -> str:
        items = list(self.positional) + [f"{k}={v}" for k, v in self.named.items()]
        return f"<{self.kind}:{':'.join(items)}>"


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_tag(kind: str, body: str) -> LoraTag:
    tag = LoraTag(kind=kind, positional=[])
    for item in body.split(":"):
        parts = item.split("=", 2)
        if len(parts) == 2:
            tag.named[parts[0]] = parts[1]
        else:
            tag.positional.append(item)
    return tag


def has_positional_spec(tag: LoraTag) -> bool:
    return len(tag.positional) >= 3 and not is_number(tag.positional[2])


def normalise_tag(tag: LoraTag) -> tuple[LoraTag, Optional[str]]:
    """Move a non-numeric third positional item into `lbw=`. Returns the tag and a warning (or None)."""
    if not has_positional_spec(tag):
        return tag, None
    spec = tag.positional.pop(2)
    if SPEC_KEY in tag.named:
        return tag, f"{tag.name}: both '{spec}' and 'lbw={tag.named[SPEC_KEY]}' given; using lbw="
    # keep lbw= right after the positional items, where users expect to see it
    tag.named = {SPEC_KEY: spec, **tag.named}
    return tag, None


def rewrite_prompt(prompt: str) -> tuple[str, list[str]]:
    """Rewrite every tag of ours into the `lbw=` form; every other tag is left byte-identical."""
    warnings: list[str] = []

    def replace(match: re.Match) -> str:
        tag = parse_tag(match.group(1), match.group(2))
        if not has_positional_spec(tag):
            return match.group(0)
        tag, warning = normalise_tag(tag)
        if warning:
            warnings.append(warning)
        return tag.text()

    return TAG_RE.sub(replace, prompt), warnings


def find_tags(prompt: str) -> list[LoraTag]:
    return [normalise_tag(parse_tag(m.group(1), m.group(2)))[0] for m in TAG_RE.finditer(prompt)]


def _edit_tag(prompt: str, lora_name: Optional[str], edit) -> str:
    """Apply `edit(tag)` to the first tag named `lora_name` (or the first tag at all when None)."""
    for match in TAG_RE.finditer(prompt):
        tag = normalise_tag(parse_tag(match.group(1), match.group(2)))[0]
        if lora_name is None or tag.name == lora_name:
            edit(tag)
            return prompt[: match.start()] + tag.text() + prompt[match.end():]
    wanted = f"<lora:{lora_name}:...>" if lora_name else "<lora:...>"
    raise ValueError(f"the prompt has no {wanted} tag to change; add one or name a LoRA that is in the prompt")


def set_strength(prompt: str, strength: float, lora_name: Optional[str] = None) -> str:
    """Set a tag's strength (its text-encoder and, when given positionally, UNet multiplier)."""
    value = f"{strength:g}"

    def edit(tag: LoraTag) -> None:
        if len(tag.positional) < 2:
            tag.positional.append(value)
        else:
            tag.positional[1] = value
        if len(tag.positional) >= 3:
            tag.positional[2] = value

    return _edit_tag(prompt, lora_name, edit)


def set_block_spec(prompt: str, spec: str, lora_name: Optional[str] = None) -> str:
    """Give a tag the block-weight spec `spec` (numbers or a preset name), adding a strength of 1 if it had none."""

    def edit(tag: LoraTag) -> None:
        if len(tag.positional) < 2:
            tag.positional.append("1")
        tag.named = {SPEC_KEY: spec, **{k: v for k, v in tag.named.items() if k != SPEC_KEY}}

    return _edit_tag(prompt, lora_name, edit)


def split_axis_value(value: str) -> tuple[Optional[str], str]:
    """X/Y/Z axis values are `VALUE` (first LoRA tag) or `LORA_NAME:VALUE` (LoRA names cannot hold ':')."""
    name, sep, rest = value.strip().rpartition(":")
    return (name.strip() or None, rest.strip()) if sep else (None, value.strip())
