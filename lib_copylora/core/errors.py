"""Typed errors raised by the core; adapters (CLI, WebUI) decide how to show them."""


class CopyLoraError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""


class FormatError(CopyLoraError):
    """A file is not a readable LoRA (corrupt, truncated, no LoRA keys, unknown keys)."""


class FamilyMismatch(CopyLoraError):
    """LoRAs made for different model families (SD1, SD2, SDXL) were combined."""


class ShapeMismatch(CopyLoraError):
    """Two layers for the same module disagree on the target weight's shape."""


class SpecError(CopyLoraError):
    """A block-weight spec or preset is malformed (wrong count, unknown preset, not a number)."""


class MergeError(CopyLoraError):
    """A merge request is inconsistent (ratio count, rank <= 0, nothing to merge, non-finite result)."""


class OutputExists(CopyLoraError):
    """The output path exists and overwriting was not asked for."""


class NonFiniteSpec(SpecError):
    """A block-weight spec holds nan or inf: applying it would poison the image, so the prompt hook skips the LoRA."""


class BaseModelError(CopyLoraError):
    """Base-aware kinds need the weights they modify: none was given, or the base does not fit the LoRA."""
