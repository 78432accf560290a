"""The CopyLoRA tab in headless Chromium against the real WebUI: fill the Train form with tiny image sets, start a
short run, watch the status, loss plot and previews update, get the result and its tag, send it to txt2img; merge
it in the Merge sub-tab and see it listed; pick a block-weight preset and inspect the LoRA. Screenshots go to
`<test cache>/screenshots/`. The module's last test asserts that the whole flow left no console or page error in
the browser and no traceback or error record of ours in the server log.

Needs the Python `playwright` package and a Chromium binary (`COPYLORA_CHROMIUM`, else `chromium` on PATH); never
runs `playwright install`. Skips with the reason when either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from .install import EXTENSION_NAME, REPO_ROOT
from .logscan import extension_problems_in_log, extension_roots
from .server import is_forge_tree

pytestmark = [pytest.mark.webui, pytest.mark.browser]

SUBFOLDER = "copylora-tab-tests"
RUN = "cl-tab"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_TIMEOUT_MS = 240_000
# Browser messages that are the host's, not our tab's: (pattern searched in "<kind>: <text> @ <url>", whose, why).
HOST_CONSOLE_NOISE = (
    (r"ERR_NAME_NOT_RESOLVED @ https://cdnjs\.cloudflare\.com/ajax/libs/iframe-resizer/",
     "gradio (3.41 and 4.40)", "its index page loads iframe-resizer from a CDN, for embedding; the tier is offline"),
)


def _chromium() -> str:
    found = os.environ.get("COPYLORA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no Chromium: install Debian's chromium or set COPYLORA_CHROMIUM")
    return found


def _check_cache_path(cache_dir: Path) -> None:
    """gradio 3.41 serves no file whose path has a dotted folder, so the WebUI could not load our JavaScript
    from an extension linked into a data folder under e.g. ~/.cache."""
    dotted = [part for part in cache_dir.parts if part.startswith(".")]
    if dotted:
        pytest.skip(f"the test cache {cache_dir} has a dotted folder ({dotted[0]}): the WebUI's gradio refuses to "
                    "serve the extension's javascript/ from there; set COPYLORA_TEST_CACHE to a folder without one")


@pytest.fixture(scope="module")
def page(request, webui_settings, tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    executable = _chromium()
    if not webui_settings.url:
        _check_cache_path(webui_settings.cache_dir)
    webui = request.getfixturevalue("webui")  # after the checks: a skip should not cost a server start
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=executable, args=CHROMIUM_FLAGS,
            headless=True, viewport={"width": 1500, "height": 1100})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            # every console error and uncaught script error of the session, checked by the last test
            page.errors = []
            page.on("pageerror", lambda error: page.errors.append(f"pageerror: {error} @ {error.stack or ''}"))
            page.on("console", lambda m: page.errors.append(f"console error: {m.text} @ {m.location.get('url', '')}")
                    if m.type == "error" else None)
            # where the server log stood before the page opened: the last test reads what came after
            page.server_log_start = len(webui.server.log_text()) if webui.server is not None else None
            page.goto(webui.base_url)
            page.wait_for_selector("#txt2img_prompt textarea", timeout=180_000)
            yield page
        finally:
            context.close()


@pytest.fixture(scope="module")
def tab_sets(webui):
    from PIL import Image

    datasets = webui.folders().datasets
    for name, colour in (("tab_a", (200, 40, 40)), ("tab_b", (40, 40, 200))):
        folder = datasets / name / "2_x"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(len(name))
        for i in range(2):
            noise = rng.integers(-30, 30, size=(64, 64, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    lora_dir = webui.folders().loras
    yield lora_dir
    shutil.rmtree(lora_dir / SUBFOLDER, ignore_errors=True)
    webui.post("/sdapi/v1/refresh-loras", {})


def _shot(page, webui_settings, name: str) -> Path:
    """A full-page screenshot, named for the host (A1111 and Forge runs share the cache)."""
    folder = webui_settings.cache_dir / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    host = "forge" if webui_settings.webui_dir and is_forge_tree(webui_settings.webui_dir) else "webui"
    path = folder / f"{host}-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.blur()


def _choose(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    box.press("Enter")
    box.blur()


def _open(page, title: str) -> None:
    page.locator("#tab_copylora .label-wrap", has_text=title).first.click()


def _text(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").first.input_value()


def _fill_train_form(page) -> None:
    _fill(page, "copylora_request_name", RUN)
    page.click("#copylora_request_dataset_a_refresh")
    _choose(page, "copylora_request_dataset_a", "tab_a")
    page.wait_for_function("document.querySelector('#copylora_request_dataset_a_scan textarea').value"
                           ".includes('2 training images')")
    for elem_id, value in (("copylora_network_rank", "4"), ("copylora_network_alpha", "4"),
                           ("copylora_optim_learning_rate", "5e-3"), ("copylora_loop_max_steps", "3"),
                           ("copylora_dataset_resolution", "64")):
        _fill(page, elem_id, value)
    _open(page, "Advanced: Images, captions and buckets")
    _fill(page, "copylora_dataset_min_bucket_reso", "64")
    _fill(page, "copylora_dataset_max_bucket_reso", "128")
    _open(page, "Advanced: Route and output")
    _fill(page, "copylora_request_subfolder", SUBFOLDER)
    page.locator("#copylora_request_overwrite input").check()
    _open(page, "Preview images during training")
    _fill(page, "copylora_sample_prompts", "a shirt on a table")
    _fill(page, "copylora_sample_every_n_steps", "2")
    _fill(page, "copylora_sample_steps", "2")


def test_train_in_the_tab_and_send_the_result_to_txt2img(page, webui, webui_settings, tab_sets):
    page.locator("#tabs > .tab-nav button", has_text="CopyLoRA").click()
    page.wait_for_selector("#copylora_start")
    assert page.locator("#copylora_training_preset input").input_value().startswith("Copier: rank 8, alpha 1")
    _fill_train_form(page)
    _shot(page, webui_settings, "tab-train-form")
    assert page.locator("#copylora_runs").last.inner_text().strip() == f"1 run: {RUN}"
    page.click("#copylora_start")
    try:
        page.wait_for_function("document.querySelector('#copylora_status textarea').value.includes('running')",
                               timeout=RUN_TIMEOUT_MS)
    except Exception:
        state = page.evaluate("[typeof copyloraPoll, !!document.getElementById('copylora_poll'), "
                              "typeof copyloraTabShown === 'function' && copyloraTabShown()]")
        _shot(page, webui_settings, "tab-train-timeout")
        pytest.fail(f"the status never showed the run (poll function, poll button, tab shown: {state}; "
                    f"message: {page.locator('#copylora_message').last.inner_text()!r}; page errors: {page.errors})")
    page.wait_for_function(f"document.querySelector('#copylora_status textarea').value.includes('{RUN}: done')",
                           timeout=RUN_TIMEOUT_MS)
    page.wait_for_selector("#copylora_loss_plot .vega-embed")  # vega draws the plot once it has data
    page.wait_for_selector("#copylora_samples img")
    assert _text(page, "copylora_result_tag") == f"<lora:{RUN}:1>"
    assert "3/3" in page.locator("#copylora_queue").inner_text()
    _shot(page, webui_settings, "tab-train-done")
    assert (tab_sets / SUBFOLDER / f"{RUN}.safetensors").is_file()
    page.click("#copylora_send_txt2img")
    page.wait_for_selector("#tab_txt2img", state="visible")
    assert f"<lora:{RUN}:1>" in _text(page, "txt2img_prompt")


def test_merge_the_new_result_and_inspect_its_blocks(page, webui, webui_settings, tab_sets):
    page.locator("#tabs > .tab-nav button", has_text="CopyLoRA").click()
    page.locator("#copylora_tabs > .tab-nav button", has_text="Merge").click()
    name = f"{SUBFOLDER}/{RUN}"
    _choose(page, "copylora_merge_model_0", name)  # listed by the poll once the run finished, no restart
    _fill(page, "copylora_merge_output", f"{SUBFOLDER}/{RUN}-half")
    _fill(page, "copylora_merge_ratio_0", "0.5")
    page.locator("#copylora_merge_overwrite input").check()
    page.click("#copylora_merge_run")
    page.wait_for_function("document.querySelector('#copylora_merge_message').innerText.includes('Wrote')",
                           timeout=120_000)
    assert _text(page, "copylora_merge_tag") == f"<lora:{RUN}-half:1>"
    assert f"{RUN}-half" in {entry["name"] for entry in webui.get("/sdapi/v1/loras")}
    _shot(page, webui_settings, "tab-merge")
    page.locator("#copylora_tabs > .tab-nav button", has_text="Block weights").click()
    _choose(page, "copylora_preset_pick", "face")
    page.wait_for_function("document.querySelector('#copylora_preset_name textarea').value === 'face'")
    assert page.locator("#copylora_block_8 input[type=number]").input_value() == "0.8"  # face's OUT03
    page.click("#copylora_inspect_refresh")
    _choose(page, "copylora_inspect_lora", name)
    page.click("#copylora_inspect_run")
    page.wait_for_function("document.querySelector('#copylora_inspect_text textarea').value.includes('blocks:')")
    assert "rank 4" in _text(page, "copylora_inspect_text")
    _shot(page, webui_settings, "tab-blocks")


def _host_noise(message: str) -> bool:
    return any(re.search(pattern, message) for pattern, _whose, _why in HOST_CONSOLE_NOISE)


def test_the_flow_left_no_browser_errors_and_no_server_errors_of_ours(page, webui):
    """Runs last: what the tests above did, from loading the page to inspecting blocks, in the browser's console
    and in the server's log."""
    assert [message for message in page.errors if not _host_noise(message)] == []
    if page.server_log_start is None:
        return  # a server another run started: its log is not ours to read
    since = webui.server.log_text()[page.server_log_start:]
    roots = extension_roots(webui.sysinfo(), EXTENSION_NAME, str(REPO_ROOT))
    scripts = sorted(p.name for p in (REPO_ROOT / "scripts").glob("*.py"))
    assert extension_problems_in_log(since, roots, scripts) == []
