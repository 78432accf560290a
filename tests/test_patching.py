"""Every change we make to the WebUI's objects goes through webui/patching.py and a script unload undoes all of
it: block weights (A1111 and Forge), training forwards, hypernetworks set aside, clip skip, X/Y/Z axes and API
routes, on stand-ins shaped like the host's objects. The real reload is tests/webui/test_reload.py."""

import gc
from types import SimpleNamespace

import pytest
import torch
from fastapi import FastAPI

from lib_copylora.core.family import Family
from lib_copylora.core.presets import default_presets
from lib_copylora.webui import api, compat, patching, xyz_axes
from lib_copylora.webui.block_apply import STALE, apply_block_weights
from lib_copylora.webui.forge_blocks import STATE_ATTR
from lib_copylora.webui.host import CLIP_SKIP_OPTION, clip_skip_option
from lib_copylora.webui.model_state import prepared_model

from test_block_apply import FACE, Net
from test_forge_blocks import ForgeModel, same, spec17
from test_webui_model_state import TinyModel, opts


@pytest.fixture(autouse=True)
def clean_registry():
    patching.undo_all()
    yield
    patching.undo_all()


class Thing:
    colour = "class"


def test_attributes_come_back_as_they_were_before_the_first_change():
    thing = Thing()
    thing.size = 1
    patching.set_attribute(thing, "colour", "red", "test")
    patching.set_attribute(thing, "colour", "blue", "test")  # a second change keeps the first way back
    patching.set_attribute(thing, "size", 2, "test")
    patching.set_attribute(thing, "new", 3, "test")
    assert (thing.colour, thing.size, thing.new) == ("blue", 2, 3)
    assert patching.undo_all() == ["test"] * 3
    assert vars(thing) == {"size": 1} and thing.colour == "class"
    assert patching.active() == [] and patching.restore_attribute(thing, "size") is False


def test_items_and_a_dead_target():
    options = {"kept": 1}
    patching.set_item(options, "kept", 2, "test")
    patching.set_item(options, "added", 3, "test")
    thing = Thing()
    patching.set_attribute(thing, "colour", "red", "test")
    del thing
    gc.collect()
    patching.undo_all()  # the dead thing's entry is dropped without error
    assert options == {"kept": 1} and patching.active() == []


def test_an_undo_that_fails_does_not_keep_the_others(caplog):
    thing = Thing()
    patching.set_attribute(thing, "colour", "red", "first")
    patching.add(("broken",), thing, lambda _t: 1 / 0, "broken one")
    assert patching.undo_all() == ["broken one", "first"]
    assert thing.colour == "class" and "could not undo broken one" in caplog.text


def fake_xyz():
    class AxisOption:
        def __init__(self, label, *args, **kwargs):
            self.label = label

    return SimpleNamespace(AxisOption=AxisOption, axis_options=[AxisOption("Seed")])


class NoService:
    pass


def test_everything_we_patch_is_restored_by_undo_all(monkeypatch):
    # A1111 block weights
    net = Net("x", te=0.5, unet=0.8)
    before = net.strengths()
    apply_block_weights([net], {"x": FACE}, Family.SD1, default_presets())
    assert net.strengths() != before
    # Forge block weights
    forge = ForgeModel()
    plain, _ = forge.generate([("a", 1.0)])
    made = (forge.forge_objects_after_applying_lora.unet, forge.forge_objects_after_applying_lora.clip)
    forge.generate([("a", 1.0)], {"a": spec17(MID=0.0)})
    # training: forwards, hypernetworks, clip skip (an unload in the middle of a run)
    model, shared = TinyModel(), SimpleNamespace(loaded_hypernetworks=["hn"])
    hypernetworks = shared.loaded_hypernetworks
    training = prepared_model(model, opts(), None, shared)
    training.__enter__()
    settings = SimpleNamespace(data={CLIP_SKIP_OPTION: 1})
    encode = clip_skip_option(settings, 2)
    encode.__enter__()
    assert settings.data[CLIP_SKIP_OPTION] == 2 and shared.loaded_hypernetworks == []
    # X/Y/Z axes and API routes
    xyz = fake_xyz()
    monkeypatch.setattr(compat, "xyz_module", lambda: xyz)
    assert xyz_axes.register_axes()
    app = FastAPI()
    routes_before = len(app.router.routes)
    api.register_routes(app, NoService())
    assert len(xyz.axis_options) == 4 and len(app.router.routes) > routes_before

    owners = patching.undo_all()

    assert patching.active() == []
    assert {"block weights", "block weights (Forge)", "training forwards", "training without hypernetworks",
            "clip skip for a training encode", "X/Y/Z axes", "API routes"} <= set(owners)
    assert net.strengths() == before and not any("multiplier" in vars(m) for m in net.modules.values())
    assert all(net.stale())  # the built-in cache re-merges the plain weights on the next forward
    assert (forge.forge_objects_after_applying_lora.unet, forge.forge_objects_after_applying_lora.clip) == made
    assert not hasattr(forge, STATE_ATTR)
    assert same(forge.generate([("a", 1.0)])[0], plain)
    assert all("forward" not in vars(block) for block in model.model.diffusion_model)
    assert shared.loaded_hypernetworks is hypernetworks and hypernetworks == ["hn"]
    assert settings.data == {CLIP_SKIP_OPTION: 1}
    assert [o.label for o in xyz.axis_options] == ["Seed"]
    assert len(app.router.routes) == routes_before
    error = RuntimeError("unload")  # the interrupted run's own clean-up then finds nothing left to undo
    assert encode.__exit__(RuntimeError, error, None) is False
    assert training.__exit__(RuntimeError, error, None) is False
    assert settings.data == {CLIP_SKIP_OPTION: 1}
    assert shared.loaded_hypernetworks == ["hn"] and patching.active() == []


def test_registering_twice_keeps_one_set_of_axes(monkeypatch):
    xyz = fake_xyz()
    monkeypatch.setattr(compat, "xyz_module", lambda: xyz)
    xyz_axes.register_axes()
    xyz_axes.register_axes()  # the WebUI re-imports our script on a reload
    assert len(xyz.axis_options) == 4
    xyz_axes.unregister_axes()
    assert [o.label for o in xyz.axis_options] == ["Seed"]
