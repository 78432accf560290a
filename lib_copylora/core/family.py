"""Model families a LoRA can be made for, and the names other tools use for them."""

from __future__ import annotations

import enum


class Family(enum.Enum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    @property
    def base_model_version(self) -> str:
        """The value kohya writes to `ss_base_model_version`."""
        return {Family.SD1: "sd_v1", Family.SD2: "sd_v2", Family.SDXL: "sdxl_base_v1-0"}[self]

    @property
    def label(self) -> str:
        return {Family.SD1: "SD1", Family.SD2: "SD2", Family.SDXL: "SDXL"}[self]

    @classmethod
    def from_base_model_version(cls, value: str) -> "Family | None":
        value = (value or "").lower()
        if value.startswith("sdxl"):
            return cls.SDXL
        if value.startswith("sd_v2") or value.startswith("sd_2"):
            return cls.SD2
        if value.startswith("sd_v1") or value.startswith("sd_1"):
            return cls.SD1
        return None
