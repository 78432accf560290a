"""The webui tier: one real AUTOMATIC1111 WebUI per test run, with this checkout installed as an extension.

Configured by the environment (see docs/webui-testbed.md):
  COPYLORA_WEBUI_DIR     a prepared WebUI tree; the run starts and stops its own server
  COPYLORA_WEBUI_PYTHON  that tree's interpreter (default: <DIR>/venv/bin/python)
  COPYLORA_WEBUI_URL     a server someone already started (takes precedence; nothing is started or stopped)
  COPYLORA_TEST_CACHE    generated fixtures, logs and the WebUI data folder (default: copylora-tests-<uid> in the temporary folder)
With none of the first three set, every test marked `webui` or `browser` is skipped at collection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from .client import WebuiClient
from .fixtures.cache import (FixturePaths, check_outside, default_cache_dir, ensure_fixtures, ensure_sd2_checkpoint,
                             ensure_sdxl_checkpoint)
from .fixtures.make_loras import KINDS, network_name
from .install import REPO_ROOT, install_extension
from .server import ServerConfig, WebuiServer, is_forge_tree

TIER_MARKERS = ("webui", "browser")
SKIP_REASON = ("no WebUI configured: set COPYLORA_WEBUI_DIR (and COPYLORA_WEBUI_PYTHON) or COPYLORA_WEBUI_URL; "
               "see docs/webui-testbed.md")
SERVER_KEY = pytest.StashKey[WebuiServer]()


@dataclass(frozen=True)
class WebuiSettings:
    webui_dir: Path | None = field(metadata={"help": "COPYLORA_WEBUI_DIR: a prepared WebUI tree"})
    python: Path | None = field(metadata={"help": "COPYLORA_WEBUI_PYTHON: that tree's interpreter"})
    url: str | None = field(metadata={"help": "COPYLORA_WEBUI_URL: a server that is already running"})
    cache_dir: Path = field(metadata={"help": "COPYLORA_TEST_CACHE: fixtures, logs, WebUI data; outside the repo"})

    def __post_init__(self):
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"COPYLORA_WEBUI_URL must be an http(s) URL, got {self.url!r}")
        if self.python is not None and self.webui_dir is None and not self.url:
            raise ValueError("COPYLORA_WEBUI_PYTHON is set but COPYLORA_WEBUI_DIR is not")

    @classmethod
    def from_env(cls) -> WebuiSettings:
        env = os.environ
        webui_dir = Path(env["COPYLORA_WEBUI_DIR"]).expanduser().resolve() if env.get("COPYLORA_WEBUI_DIR") else None
        python = Path(env["COPYLORA_WEBUI_PYTHON"]).expanduser() if env.get("COPYLORA_WEBUI_PYTHON") else None
        if python is None and webui_dir is not None:
            python = webui_dir / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        return cls(webui_dir, python, env.get("COPYLORA_WEBUI_URL") or None, default_cache_dir())

    @property
    def configured(self) -> bool:
        return bool(self.url or self.webui_dir)

    def path_problems(self) -> list[str]:
        """What is wrong with a COPYLORA_WEBUI_DIR setup, in words; empty when it looks usable."""
        if self.url or self.webui_dir is None:
            return []
        problems = []
        if not (self.webui_dir / "launch.py").is_file():
            problems.append(f"COPYLORA_WEBUI_DIR={self.webui_dir} has no launch.py")
        if not self.python.is_file():
            problems.append(f"the WebUI interpreter {self.python} does not exist (set COPYLORA_WEBUI_PYTHON)")
        return problems


TEST_TIMEOUT_S = 900  # one hung test must not hold the 9 GB server for ever (a whole tier run takes ~10 min)


def pytest_collection_modifyitems(config, items):
    if WebuiSettings.from_env().configured:
        if config.pluginmanager.hasplugin("timeout"):  # pytest-timeout, from requirements-dev.txt
            for item in items:
                if any(item.get_closest_marker(m) for m in TIER_MARKERS) and not item.get_closest_marker("timeout"):
                    # fixtures count too (a hung checkpoint switch must end); the wait for the tier's lock does
                    # not, since pytest_runtestloop takes it before the first test
                    item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if any(item.get_closest_marker(m) for m in TIER_MARKERS):
            item.add_marker(skip)


def find_bpe_vocab(python: Path) -> Path:
    """CLIP's BPE merge list as open_clip ships it inside the WebUI's environment (found without importing torch)."""
    probe = "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('open_clip').origin))"
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    vocab = Path(found.stdout.strip()) / "bpe_simple_vocab_16e6.txt.gz"
    if found.returncode != 0 or not vocab.is_file():
        raise RuntimeError(f"no open_clip BPE vocabulary in {python}'s environment: {found.stderr.strip()[-500:]}")
    return vocab


@contextlib.contextmanager
def exclusive_lock(path: Path):
    """Hold an exclusive lock on `path` for the block (POSIX only): runs sharing a cache share a data folder,
    and two 9 GB servers at once do not fit a small machine, so a second run waits for the first."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; run one tier at a time by hand
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session):
    """Take the shared cache's lock before the first test, not inside it: a run that waits its turn behind
    another must not spend its tests' time limits (pytest-timeout counts fixture set-up) while waiting."""
    settings = WebuiSettings.from_env()
    wanted = settings.configured and not settings.url and not session.config.option.collectonly and any(
        item.get_closest_marker(m) for item in session.items for m in TIER_MARKERS)
    if not wanted:
        yield
        return
    lock = settings.cache_dir / "webui.lock"
    print(f"\nwebui tier: waiting for {lock} (one WebUI server at a time)", flush=True)
    with exclusive_lock(lock):
        yield


@pytest.fixture(scope="session")
def webui_settings() -> WebuiSettings:
    settings = WebuiSettings.from_env()
    if not settings.configured:
        pytest.skip(SKIP_REASON)
    if settings.path_problems():
        pytest.fail("; ".join(settings.path_problems()), pytrace=False)
    check_outside(settings.cache_dir, REPO_ROOT)
    return settings


@pytest.fixture(scope="session")
def webui_fixtures(webui_settings) -> FixturePaths | None:
    """Our generated checkpoint, LoRAs and tokenizer cache; None against a server someone else started."""
    if webui_settings.url:
        return None
    return ensure_fixtures(webui_settings.cache_dir, find_bpe_vocab(webui_settings.python))


@pytest.fixture(scope="session")
def webui(request, webui_settings, webui_fixtures):
    """A client for the running WebUI; the server (when this run starts one) lives for the whole run."""
    if webui_settings.url:
        yield WebuiClient(webui_settings.url)
        return
    # the data folder keeps config, extensions and hashes out of the WebUI tree, one per tree
    tree_key = hashlib.sha1(str(webui_settings.webui_dir).encode("utf-8")).hexdigest()[:8]
    data_dir = webui_settings.cache_dir / f"webui-data-{tree_key}"
    server = WebuiServer(ServerConfig(
        webui_dir=webui_settings.webui_dir, python=webui_settings.python, data_dir=data_dir,
        checkpoint=webui_fixtures.checkpoint, lora_dir=webui_fixtures.lora_dir, hf_home=webui_fixtures.hf_home,
        log_dir=webui_settings.cache_dir / "logs"))
    request.config.stash[SERVER_KEY] = server
    # the cache's lock is already held: pytest_runtestloop takes it before the first test (see there)
    install_extension(data_dir / "extensions", REPO_ROOT)
    # every run starts from the WebUI's default settings: a server killed during a module (for memory, say) could
    # not let that module put back the options it set, and its config.json would hold them (seen: an SDXL
    # checkpoint and lora_functional, under which the next run's block-weight images differed)
    (data_dir / "config.json").unlink(missing_ok=True)
    try:
        yield WebuiClient(server.start(), server=server)
    finally:
        server.stop()


# The WebUI's own config for SD2-768-v, inside its tree; the fixture copies it beside the random SD2 checkpoint.
SD2_V_CONFIG = ("repositories", "stable-diffusion-stability-ai", "configs", "stable-diffusion", "v2-inference-v.yaml")
# Forge builds the model from its keys and reads only the prediction type from a config beside the checkpoint
# (backend/loader.py); without one it guesses v from one norm's spread, which a random checkpoint answers as eps.
FORGE_V_CONFIG = "model:\n  params:\n    parameterization: v\n"


class Sd2Checkpoint(NamedTuple):  # also the SDXL fixture's value
    title: str  # the value of the `sd_model_checkpoint` option that loads it
    sha256: str


def fresh_server(webui) -> None:
    """Restart the server before a module that switches to a large checkpoint. A1111 builds the new model while the
    old one and the new state dict are still held, and switches back the same way (about 13 GiB for SD2 in fp32 on
    a fresh server); after the rest of the tier the server had grown to about 20 GiB, and the switch back was
    killed for memory on a 24 GB machine (2026-12)."""
    webui.restart()


@pytest.fixture(scope="module")
def sd2_checkpoint(webui, webui_settings) -> Iterator[Sd2Checkpoint]:
    """Our random SD2-768-v checkpoint, listed by the running server (linked into its models/Stable-diffusion for
    the module, then unlinked) with a v config beside it: A1111's own from its tree, on Forge the one line it
    reads. Only for a server this run started: it needs the WebUI tree."""
    if webui.server is None:
        pytest.skip("the SD2 fixture needs a WebUI this run started (COPYLORA_WEBUI_DIR), not COPYLORA_WEBUI_URL")
    fresh_server(webui)
    forge = is_forge_tree(webui_settings.webui_dir)
    v_config = None if forge else webui_settings.webui_dir.joinpath(*SD2_V_CONFIG)
    if v_config is not None and not v_config.is_file():
        pytest.skip(f"this WebUI tree has no {v_config.name}; it cannot load an SD2-v checkpoint")
    checkpoint, digest = ensure_sd2_checkpoint(webui_settings.cache_dir, v_config)
    models = webui.server.config.data_dir / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    linked = [models / checkpoint.name, models / checkpoint.with_suffix(".yaml").name]
    for link in linked:
        link.unlink(missing_ok=True)
    os.link(checkpoint, linked[0])  # a hard link: the WebUI looks for the config beside the path it lists
    if forge:
        linked[1].write_text(FORGE_V_CONFIG, encoding="utf-8")
    else:
        os.link(checkpoint.with_suffix(".yaml"), linked[1])
    try:
        webui.post("/sdapi/v1/refresh-checkpoints", {})
        titles = [m["title"] for m in webui.get("/sdapi/v1/sd-models") if Path(m["filename"]).name == checkpoint.name]
        assert titles, f"the WebUI does not list {checkpoint.name} after a refresh"
        yield Sd2Checkpoint(titles[0], digest)
    finally:
        for link in linked:
            link.unlink(missing_ok=True)
        webui.post("/sdapi/v1/refresh-checkpoints", {})


# sgm and its SDXL config, inside an A1111 tree: without them A1111 cannot build an SDXL model (Forge needs neither).
SDXL_CONFIG = ("repositories", "generative-models", "configs", "inference", "sd_xl_base.yaml")


@pytest.fixture(scope="module")
def sdxl_checkpoint(webui, webui_settings) -> Iterator[Sd2Checkpoint]:
    """Our random SDXL base checkpoint (6.9 GB; about 14 GB once the --no-half server loads it), listed by the
    running server for the module (hard-linked into its models/Stable-diffusion, then unlinked). No config goes
    beside it: either host recognises SDXL from its keys (A1111 then builds it from sgm's sd_xl_base.yaml in its
    tree; Forge from its own backend, guessing the architecture with huggingface_guess, with no sgm at all).
    Only for a server this run started."""
    if webui.server is None:
        pytest.skip("the SDXL fixture needs a WebUI this run started (COPYLORA_WEBUI_DIR), not COPYLORA_WEBUI_URL")
    fresh_server(webui)
    if not is_forge_tree(webui_settings.webui_dir) and not webui_settings.webui_dir.joinpath(*SDXL_CONFIG).is_file():
        pytest.skip("this WebUI tree has no generative-models repository; it cannot load an SDXL checkpoint")
    checkpoint, digest = ensure_sdxl_checkpoint(webui_settings.cache_dir)
    models = webui.server.config.data_dir / "models" / "Stable-diffusion"
    models.mkdir(parents=True, exist_ok=True)
    link = models / checkpoint.name
    link.unlink(missing_ok=True)
    os.link(checkpoint, link)
    try:
        webui.post("/sdapi/v1/refresh-checkpoints", {})
        titles = [m["title"] for m in webui.get("/sdapi/v1/sd-models") if Path(m["filename"]).name == checkpoint.name]
        assert titles, f"the WebUI does not list {checkpoint.name} after a refresh"
        yield Sd2Checkpoint(titles[0], digest)
    finally:
        link.unlink(missing_ok=True)
        webui.post("/sdapi/v1/refresh-checkpoints", {})


@pytest.fixture(scope="session")
def fixture_loras(webui) -> dict[str, str]:
    """kind → network name of our fixture LoRAs, once the server is known to list them."""
    listed = {entry["name"] for entry in webui.get("/sdapi/v1/loras")}
    names = {kind: network_name(kind) for kind in KINDS}
    missing = sorted(set(names.values()) - listed)
    if missing:
        pytest.skip(f"the WebUI does not list the fixture LoRAs {missing}; start it with --lora-dir on them")
    return names


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = item.config.stash.get(SERVER_KEY, None)
    if report.failed and server is not None and server.log_path is not None:
        report.sections.append((f"webui server log (tail of {server.log_path})", server.log_tail(80)))


def pytest_terminal_summary(terminalreporter, config):
    server = config.stash.get(SERVER_KEY, None)
    if server is None or server.log_path is None:
        return
    rss = f"{server.peak_rss / 2**30:.1f} GiB" if server.peak_rss else "unknown"
    terminalreporter.write_line(f"webui tier: {server.starts} server start(s), peak RSS {rss}, "
                                f"last log {server.log_path}")
