"""CopyLoRA: copy-machine LoRA training, exact difference merging and block weights."""

__version__ = "0.1.0"
