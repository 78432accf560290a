"""`<lora:...>` prompt tags as text: find them, move block-weight specs into `lbw=`, and edit them for X/Y/Z.

The WebUI's own parser splits a tag's text on ':' and reads the second and third positional items as the
text-encoder and UNet strengths with `float()`. Our forms put a block-weight spec third (`<lora:n:0.8:face>`,
`<lora:n:0.8:1,0,0,...>`), which that `float()` rejects, dropping every LoRA of the generation. Rewriting the spec
into the named item `lbw=`, which the built-in parser ignores and the LoRA Block Weight extension also reads, keeps
the tag valid, keeps the spec in the prompt (so the conditioning cache and infotext follow it) and is idempotent.

The same `float()` (and `int()` for `dyn`) also fails on tags that are simply malformed (`<lora:n:abc>`,
`<lora:n:0.5:te=x>`, `<lora:n::>`, `<lora:n:0.5:lbw=a=b>`), and one such tag drops every LoRA of the generation.
`rewrite_prompt` therefore also makes every tag readable by those rules (`make_readable`): an unreadable strength
leaves that one LoRA out, any other unreadable item falls back to its default; each change is reported.
Pure text: no WebUI import, tested on its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Optional

TAG_RE = re.compile(r"<(lora|lyco):([^>]+)>")
# The WebUI's own pattern for every extra-network tag: a `<lora:` inside another kind's tag is not a LoRA tag.
EXTRA_NETWORK_RE = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")
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
    """A third item that is text, not a number, is our block-weight spec (an empty one is no spec at all)."""
    return len(tag.positional) >= 3 and bool(tag.positional[2].strip()) and not is_number(tag.positional[2])


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


def is_finite_number(text: str) -> bool:
    """What the built-in parser's `float()` reads, less nan and inf (a NaN strength blackens the image)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def make_readable(tag: LoraTag) -> tuple[Optional[LoraTag], list[str]]:
    """The tag with our block-weight form in `lbw=` and every item the built-in parser reads (positional 1 and 2
    and named te/unet by `float()`, positional 3 and named dyn by `int()`) readable; None when the LoRA must be
    left out (no name, or a strength that is not a number). Returns the problems found, one line each."""
    label = f"'{tag.kind}:{':'.join(tag.positional + [f'{k}={v}' for k, v in tag.named.items()])}'"
    if not tag.positional or not tag.positional[0].strip():
        return None, [f"{label} names no LoRA; left out of the prompt"]
    problems = []
    for item in [item for item in tag.positional[1:] if "=" in item]:  # e.g. lbw=a=b: neither named nor a value
        problems.append(f"{label}: {item!r} holds more than one '='; ignored")
        tag.positional.remove(item)
    if len(tag.positional) > 1 and not is_finite_number(tag.positional[1]):
        return None, problems + [f"{label}: the strength {tag.positional[1]!r} is not a number; this LoRA is left "
                                 "out of the prompt"]
    tag, warning = normalise_tag(tag)
    problems += [warning] if warning else []
    if len(tag.positional) > 2 and not is_finite_number(tag.positional[2]):
        problems.append(f"{label}: the UNet strength {tag.positional[2]!r} is not a number; using the strength")
        tag.positional[2] = tag.positional[1]  # the built-in default for a missing UNet strength
    if len(tag.positional) > 3 and not is_integer(tag.positional[3]):
        problems.append(f"{label}: the dyn rank {tag.positional[3]!r} is not a whole number; ignored")
        del tag.positional[3:]
    for key, readable in (("te", is_finite_number), ("unet", is_finite_number), ("dyn", is_integer)):
        if key in tag.named and not readable(tag.named[key]):
            problems.append(f"{label}: {key}={tag.named.pop(key)} is not a number; ignored")
    return tag, problems


def rewrite_prompt(prompt: str) -> tuple[str, list[str]]:
    """Rewrite every tag of ours into the `lbw=` form and make every LoRA tag readable by the built-in parser;
    tags that need neither are left byte-identical. Idempotent: a second pass changes nothing and finds nothing."""
    warnings: list[str] = []

    def replace(match: re.Match) -> str:
        if match.group(1) not in LORA_KINDS:
            return match.group(0)
        tag = parse_tag(match.group(1), match.group(2))
        ours = has_positional_spec(tag)
        readable, problems = make_readable(tag)
        warnings.extend(problems)
        if readable is None:
            return ""
        return readable.text() if ours or problems else match.group(0)

    return EXTRA_NETWORK_RE.sub(replace, prompt), warnings


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
