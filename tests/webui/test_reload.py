"""Settings → Reload UI on the real WebUI: our scripts are unloaded and loaded again in the same process. Nothing of
ours may be left behind (block weights on cached LoRAs, doubled X/Y/Z axes, stale API routes), and everything must
work again afterwards. The unload itself says in the console what it undid."""

from __future__ import annotations

import time

import numpy as np
import pytest

from .client import XYZ_SCRIPT

pytestmark = pytest.mark.webui

PROMPT = "a red cube on a wooden table"
SEED = 5150
AXES = ("CopyLoRA: strength", "CopyLoRA: block preset", "CopyLoRA: block sweep")
RELOAD_BUTTON = "settings_restart_gradio"
UNLOADED = "CopyLoRA: unloaded; undid"
RELOAD_TIMEOUT_S = 600


def same(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


def _reload_fn_index(config: dict) -> int:
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == RELOAD_BUTTON)
    found = [index for index, dependency in enumerate(config["dependencies"])
             if button in [t[0] if isinstance(t, list) else t for t in dependency.get("targets", [])]]  # gradio 3/4
    if not found:
        raise KeyError("no Reload UI function in the WebUI's gradio config")
    return found[0]


def reload_ui(webui) -> None:
    """What the Reload UI button does: its gradio function asks the server loop to reload; wait for the new UI."""
    log_before = webui.server.log_text().count("Startup time:")
    index = _reload_fn_index(webui.get("/config"))
    webui.post("/run/predict", {"fn_index": index, "data": [], "session_hash": "copylora-reload-test"})
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while time.monotonic() < deadline:
        if webui.server.log_text().count("Startup time:") > log_before:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the WebUI did not come back from Reload UI:\n{webui.server.log_tail()}")


def test_reload_leaves_no_trace_and_we_work_again(webui, fixture_loras):
    if webui.server is None:
        pytest.skip("Reload UI needs a WebUI this run started (its console is read)")
    lora = fixture_loras["lora"]
    plain = webui.txt2img(f"{PROMPT} <lora:{lora}:1>", SEED).image
    weighted = webui.txt2img(f"{PROMPT} <lora:{lora}:1:OUTALL>", SEED).image  # leaves our multipliers on the LoRA
    assert not same(weighted, plain)
    presets_before = webui.get("/copylora/v1/presets")

    reload_ui(webui)

    log = webui.server.log_text()
    assert UNLOADED in log
    unload_line = next(line for line in log.splitlines() if UNLOADED in line)
    assert "block weights" in unload_line and "X/Y/Z axes" in unload_line and "API routes" in unload_line
    # the cached LoRA carries none of our multipliers: plain weight is plain again (the built-in re-merged it)
    assert same(webui.txt2img(f"{PROMPT} <lora:{lora}:1>", SEED).image, plain)
    labels = next(a for a in webui.script_args(XYZ_SCRIPT) if a["label"] == "X type")["choices"]
    assert [labels.count(axis) for axis in AXES] == [1, 1, 1]
    routes = [r for r in webui.get("/openapi.json")["paths"] if r.startswith("/copylora/v1/presets")]
    assert sorted(routes) == ["/copylora/v1/presets", "/copylora/v1/presets/{name}"]
    # and we work again: block weights, the API
    assert same(webui.txt2img(f"{PROMPT} <lora:{lora}:1:OUTALL>", SEED).image, weighted)
    assert webui.get("/copylora/v1/presets") == presets_before
