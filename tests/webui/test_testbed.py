"""The tier itself works: our model is loaded, the extension loads cleanly, LoRAs act and reproduce, restarts hold.

Images are 64×64 with 2 Euler steps: enough to show a change, cheap on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .install import EXTENSION_NAME, REPO_ROOT
from .logscan import extension_exceptions, extension_problems_in_log, extension_roots

pytestmark = pytest.mark.webui

PROMPT = "a red cube on a wooden table"
SEED = 31337
VISIBLE_CHANGE = 4.0  # mean absolute difference in 0..255 levels; the fixture LoRAs measured 30-50 here
NOT_FLAT = 10.0  # a dead model (zero output convolutions) gives a flat image


def _assert_extension_loaded_cleanly(webui) -> None:
    info = webui.sysinfo()
    ours = [entry for entry in info["Extensions"] if EXTENSION_NAME in entry["name"].lower()]
    assert ours, f"{EXTENSION_NAME} is not among the active extensions: {info['Extensions']}"
    roots = extension_roots(info, EXTENSION_NAME, str(REPO_ROOT))
    assert extension_exceptions(info, roots) == []
    scripts = sorted(p.name for p in (REPO_ROOT / "scripts").glob("*.py"))
    startup = info["Startup"]["records"]
    assert [name for name in scripts if f"load scripts/{name}" not in startup] == []
    if webui.server is not None:
        assert extension_problems_in_log(webui.server.log_text(), roots, scripts) == []


def test_the_model_in_use_is_the_fixture_checkpoint(webui, webui_fixtures):
    loaded = webui.loaded_checkpoint()
    if webui_fixtures is None:
        if not loaded["model_name"].startswith("copylora-sd15-random"):
            pytest.skip(f"the running WebUI uses {loaded['title']}, not a fixture checkpoint")
        return
    assert Path(loaded["filename"]).resolve() == webui_fixtures.checkpoint.resolve()
    _, infotext = webui.txt2img(PROMPT, SEED)  # Forge loads and hashes the checkpoint at its first generation
    assert f"Model hash: {webui_fixtures.checkpoint_sha256[:10]}" in infotext
    assert webui.loaded_checkpoint()["sha256"] == webui_fixtures.checkpoint_sha256


def test_the_extension_loads_without_errors(webui):
    _assert_extension_loaded_cleanly(webui)


def test_xyz_axis_lookup_finds_builtin_axes(webui):
    seed_axis, steps_axis = webui.xyz_axis_index("Seed"), webui.xyz_axis_index("Steps")
    assert seed_axis > 0 and steps_axis > 0 and seed_axis != steps_axis  # 0 is "Nothing"
    with pytest.raises(KeyError, match="no axis"):
        webui.xyz_axis_index("no such axis")


@pytest.fixture(scope="module")
def plain_image(webui) -> np.ndarray:
    """The prompt without any LoRA, made once for the comparisons below."""
    image, infotext = webui.txt2img(PROMPT, SEED)
    assert "Lora hashes" not in infotext
    return image


@pytest.mark.parametrize("kind", ["lora", "locon", "loha", "lokr"])
def test_each_lora_kind_loads_fully_and_changes_the_image(webui, fixture_loras, plain_image, kind):
    name, base = fixture_loras[kind], plain_image
    assert base.std() > NOT_FLAT
    changed, infotext = webui.txt2img(f"{PROMPT} <lora:{name}:1>", SEED)
    assert np.abs(changed.astype(np.int16) - base.astype(np.int16)).mean() > VISIBLE_CHANGE
    assert name in infotext  # "Lora hashes" names every network that was applied
    if webui.server is not None:
        log = webui.server.log_text()
        assert " DEBUG [" in log, "the server must log at DEBUG for unmatched LoRA keys to show"
        assert [line for line in log.splitlines() if "didn't match keys" in line and name in line] == []


def test_a_lora_tag_is_bit_identical_across_requests(webui, fixture_loras):
    prompt = f"{PROMPT} <lora:{fixture_loras['lora']}:1>"
    first, first_info = webui.txt2img(prompt, SEED)
    second, second_info = webui.txt2img(prompt, SEED)
    assert first.tobytes() == second.tobytes()
    assert first_info == second_info


def test_the_server_comes_back_clean_after_a_restart(webui, fixture_loras):
    """Restart = stop the process by pid and start it again, as a user does (the API's restart route needs
    the launcher script's loop and --api-server-stop). Runs last in this file: it replaces the process."""
    if webui.server is None:
        pytest.skip("a server started outside this run (COPYLORA_WEBUI_URL) is not restarted")
    prompt = f"{PROMPT} <lora:{fixture_loras['locon']}:1>"
    before, _ = webui.txt2img(prompt, SEED)
    old_pid = webui.server.pid
    webui.restart()
    assert webui.server.pid != old_pid
    _assert_extension_loaded_cleanly(webui)
    after, _ = webui.txt2img(prompt, SEED)
    assert after.tobytes() == before.tobytes()
