"""Malformed files of the new kinds: each is refused with one line naming the module, the file left as it was."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lib_copylora.cli import main
from lib_copylora.core.base_weights import open_checkpoint_base
from lib_copylora.core.errors import BaseModelError, FormatError
from lib_copylora.core.formats import lora_from_state_dict
from lib_copylora.core.merge import MergeSpec, merge_loras
from lora_factory import NAMES, base_checkpoint

M = NAMES[next(iter(NAMES))]["linear"]
CONV = NAMES[next(iter(NAMES))]["conv"]
t = torch.zeros

BAD = {
    "oft blocks not square": {f"{M}.oft_blocks": t(3, 2, 4)},
    "oft blocks a matrix": {f"{M}.oft_blocks": t(3, 2)},
    "boft odd blocks": {f"{M}.oft_blocks": t(1, 2, 3, 3)},
    "oft_diag 4-D": {f"{M}.oft_diag": t(1, 3, 2, 2)},
    "oft rescale size": {f"{M}.oft_blocks": t(3, 2, 2), f"{M}.rescale": t(5, 1)},
    "both oft keys": {f"{M}.oft_blocks": t(3, 2, 2), f"{M}.oft_diag": t(3, 2, 2)},
    "ia3 on_input not one number": {f"{M}.weight": t(6), f"{M}.on_input": t(2)},
    "ia3 weight a matrix": {f"{M}.weight": t(6, 8), f"{M}.on_input": torch.tensor(0)},
    "glora factors do not chain": {f"{M}.a1.weight": t(2, 8), f"{M}.a2.weight": t(8, 3), f"{M}.b1.weight": t(2, 8),
                                   f"{M}.b2.weight": t(6, 2)},
    "glora conv": {f"{M}.a1.weight": t(2, 8, 1, 1), f"{M}.a2.weight": t(8, 2, 1, 1),
                   f"{M}.b1.weight": t(2, 8, 1, 1), f"{M}.b2.weight": t(6, 2, 1, 1)},
    "norm weight 2-D": {f"{M}.w_norm": t(4, 4)},
    "norm bias other size": {f"{M}.w_norm": t(4), f"{M}.b_norm": t(5)},
    "loha 4-D kernels differ": {f"{CONV}.hada_w1_a": t(6, 2), f"{CONV}.hada_w1_b": t(2, 4, 3, 3),
                                f"{CONV}.hada_w2_a": t(6, 2), f"{CONV}.hada_w2_b": t(2, 4, 1, 1)},
    "dora_scale without a layer": {f"{M}.dora_scale": t(1, 8)},
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_new_kinds_are_refused(case, tmp_path, capsys):
    with pytest.raises(FormatError) as error:
        lora_from_state_dict(dict(BAD[case]))
    message = str(error.value)
    assert "\n" not in message and (M in message or CONV in message)
    path = tmp_path / "bad.safetensors"
    save_file(BAD[case], str(path))
    before = path.read_bytes()
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and path.read_bytes() == before


def test_dora_scale_of_the_wrong_width_names_the_module_at_merge(tmp_path):
    up, down = torch.ones(6, 2), torch.ones(2, 8)
    lora = lora_from_state_dict({f"{M}.lora_up.weight": up, f"{M}.lora_down.weight": down,
                                 f"{M}.dora_scale": torch.ones(1, 5)})
    save_file(base_checkpoint(), str(tmp_path / "base.safetensors"))
    base = open_checkpoint_base(tmp_path / "base.safetensors")
    with pytest.raises(BaseModelError, match=f"module {M}: .*dora_scale"):
        merge_loras([lora], MergeSpec(ratios=(1.0,)), base)


def test_oft_for_another_width_names_the_module(tmp_path):
    lora = lora_from_state_dict({f"{M}.oft_blocks": torch.zeros(4, 2, 2)})  # 8 output channels, the base has 6
    save_file(base_checkpoint(), str(tmp_path / "base.safetensors"))
    with pytest.raises(BaseModelError, match=f"module {M}: the base weight has shape \\(6, 8\\) .*8 output"):
        merge_loras([lora], MergeSpec(ratios=(1.0,)), open_checkpoint_base(tmp_path / "base.safetensors"))
