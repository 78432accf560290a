"""The prompt hook's pure parts: rewriting the prompts the WebUI hands over, the once-only warning about the LoRA
Block Weight extension, and the `lbw=` specs read from the WebUI's parsed extra-network data."""

import sys
import types

import pytest

from lib_copylora.webui import prompt_hook


class Params:
    """Shaped like the WebUI's ExtraNetworkParams."""

    def __init__(self, items):
        self.items = items
        self.positional = [i for i in items if len(i.split("=", 2)) != 2]
        self.named = dict(i.split("=", 1) for i in items if len(i.split("=", 2)) == 2)


class P:
    def __init__(self, prompts, hr_prompts=None):
        self.all_prompts, self.all_hr_prompts = prompts, hr_prompts
        self.comments, self.extra_generation_params = {}, {}

    def comment(self, text):
        self.comments[text] = 1


@pytest.fixture
def fake_scripts(monkeypatch):
    """A `modules.scripts` whose scripts_data we control (the hook imports it lazily)."""
    scripts = types.SimpleNamespace(scripts_data=[])
    modules = types.ModuleType("modules")
    modules.scripts = scripts
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.scripts", scripts)
    return scripts


def test_process_rewrites_prompts_and_hires_prompts(fake_scripts):
    p = P(["a <lora:x:0.8:face>", "b <lora:x:0.8>"], ["c <lora:y:1:1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0>"])
    prompt_hook.BlockWeightHook().process(p)
    assert p.all_prompts == ["a <lora:x:0.8:lbw=face>", "b <lora:x:0.8>"]
    assert p.all_hr_prompts == ["c <lora:y:1:lbw=1,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0>"]
    assert p.comments == {}


def test_lbw_extension_is_warned_about_once(fake_scripts, caplog):
    fake_scripts.scripts_data.append(types.SimpleNamespace(path="/x/extensions/sd-webui-lora-block-weight/scripts/"
                                                                "lora_block_weight.py"))
    hook = prompt_hook.BlockWeightHook()
    with caplog.at_level("WARNING", logger="copylora"):
        hook.process(P(["a"]))
        hook.process(P(["b"]))
    warnings = [r for r in caplog.records if "LoRA Block Weight extension" in r.getMessage()]
    assert len(warnings) == 1


def test_no_warning_without_that_extension(fake_scripts, caplog):
    fake_scripts.scripts_data.append(types.SimpleNamespace(path="/x/extensions-builtin/Lora/scripts/lora_script.py"))
    with caplog.at_level("WARNING", logger="copylora"):
        prompt_hook.BlockWeightHook().process(P(["a"]))
    assert not caplog.records


def test_conflicting_specs_are_reported_in_comment_and_infotext(fake_scripts):
    p = P(["<lora:x:1:face:lbw=pose>"])
    prompt_hook.BlockWeightHook().process(p)
    assert p.all_prompts == ["<lora:x:1:lbw=pose>"]
    assert any("lbw=" in c for c in p.comments)
    assert "face" in p.extra_generation_params[prompt_hook.PROBLEMS_KEY]


def test_specs_come_from_lora_and_lyco_tags():
    data = {"lora": [Params(["x", "1", "lbw=face"]), Params(["y", "0.5"])], "lyco": [Params(["z", "1", "lbw=ALL"])],
            "hypernet": [Params(["h", "1", "lbw=face"])]}
    assert prompt_hook.specs_from(data) == {"x": "face", "z": "ALL"}


def test_malformed_tags_are_repaired_and_reported_once_everywhere(fake_scripts, caplog):
    """Issue 10, defect 7: the bad tag goes (or falls back), the good one stays; comment, console and infotext
    each name it once, however many prompts of the batch carry it; the per-batch pass finds nothing more."""
    prompts = ["a <lora:good:0.7> <lora:bad:abc>"] * 3
    p = P(list(prompts), ["h <lora:good:0.7> <lora:odd:0.5:te=x>"])
    hook = prompt_hook.BlockWeightHook()
    with caplog.at_level("WARNING", logger="copylora"):
        hook.process(p)
    assert p.all_prompts == ["a <lora:good:0.7> "] * 3
    assert p.all_hr_prompts == ["h <lora:good:0.7> <lora:odd:0.5>"]
    assert len(p.comments) == 2 and all(c.startswith("CopyLoRA: 'lora:") for c in p.comments)
    assert any("'abc' is not a number" in c for c in p.comments) and any("te=x" in c for c in p.comments)
    infotext = p.extra_generation_params[prompt_hook.PROBLEMS_KEY]
    assert sorted(infotext.split(" | ")) == sorted(c.removeprefix("CopyLoRA: ") for c in p.comments)
    assert len([r for r in caplog.records if "is not a number" in r.getMessage()]) == 2
    batch = list(p.all_prompts)
    hook.before_process_batch(p, prompts=batch)
    assert batch == p.all_prompts and len(p.comments) == 2
