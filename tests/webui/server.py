"""Starting and stopping a real WebUI process for the tier: offline, on 127.0.0.1, one log file per start."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# The WebUI prints "Startup time" once its API routes are added. No request may come before that: the first
# request freezes the app's middleware, and the API's own middleware added later kills the start-up.
STARTED = re.compile(r"^Startup time: ", re.MULTILINE)
MODEL_LOADED = re.compile(r"^Model loaded in ", re.MULTILINE)
MODEL_FAILED = re.compile(r"Stable diffusion model failed to load")
KEPT_LOGS = 10
STOP_GRACE_S = 30.0

# Flags that make v1.10.1 start without network or GPU; --server-name always, since with --nowebui and no
# name the WebUI binds every interface.
OFFLINE_CPU_FLAGS = (
    "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-version-check", "--no-download-sd-model",
    "--use-cpu", "all", "--no-half", "--precision", "full", "--api", "--server-name", "127.0.0.1",
    "--loglevel", "DEBUG",  # the built-in Lora extension reports unmatched LoRA keys only at DEBUG
)
# Forge (a tree with `modules_forge/`) takes the same flags plus its own device flag, and loads the model at the first
# generation rather than at start-up, so it is ready once its API answers. With --data-dir outside the tree, its
# gradio 4 serves none of the tree's own scripts and styles (HTTP 403) unless the tree is an allowed path.
FORGE_CPU_FLAGS = ("--always-cpu",)
# Inherited variables that would change what starts: extra flags, our venv's imports.
DROPPED_ENV = ("COMMANDLINE_ARGS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


@dataclass(frozen=True)
class ServerConfig:
    webui_dir: Path = field(metadata={"help": "the prepared WebUI tree (holds launch.py)"})
    python: Path = field(metadata={"help": "the interpreter of the WebUI's own environment"})
    data_dir: Path = field(metadata={"help": "--data-dir: extensions, config and outputs live here, not in the tree"})
    checkpoint: Path = field(metadata={"help": "--ckpt: the model to load"})
    lora_dir: Path = field(metadata={"help": "--lora-dir: where the built-in Lora extension finds networks"})
    hf_home: Path = field(metadata={"help": "HF_HOME holding the offline CLIP tokenizer and config"})
    log_dir: Path = field(metadata={"help": "one log file per start is written here"})
    ready_timeout_s: float = field(default=900.0, metadata={"help": "give up waiting for the model after this"})

    def __post_init__(self):
        if not (self.webui_dir / "launch.py").is_file():
            raise ValueError(f"{self.webui_dir} has no launch.py; COPYLORA_WEBUI_DIR must be a WebUI tree")
        if not self.python.is_file():
            raise ValueError(f"WebUI interpreter {self.python} does not exist (COPYLORA_WEBUI_PYTHON)")
        if self.ready_timeout_s <= 0:
            raise ValueError("ready_timeout_s must be positive")


def is_forge_tree(webui_dir: Path) -> bool:
    return (webui_dir / "modules_forge").is_dir()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def offline_environment(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               GRADIO_ANALYTICS_ENABLED="False", DO_NOT_TRACK="1")
    # On a shared CPU, OpenMP threads spinning while they wait made each image several times slower here.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def peak_rss_bytes(pid: int) -> int | None:
    """The process's high-water resident memory (Linux /proc); None where that is not available."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


class WebuiServer:
    """One WebUI process at a time; `restart()` stops it by its pid and starts a fresh one on a new port."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.log_path: Path | None = None
        self.starts = 0
        self.peak_rss: int | None = None  # the largest VmHWM seen over all processes this object ran

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self, port: int) -> list[str]:
        c = self.config
        forge_flags = (*FORGE_CPU_FLAGS, "--gradio-allowed-path", str(c.webui_dir)) if is_forge_tree(c.webui_dir) \
            else ()
        return [str(c.python), "launch.py", *OFFLINE_CPU_FLAGS, *forge_flags, "--port", str(port),
                "--data-dir", str(c.data_dir), "--ckpt", str(c.checkpoint), "--lora-dir", str(c.lora_dir)]

    def start(self) -> str:
        if self.process is not None:
            raise RuntimeError("the WebUI is already running; stop() it first")
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        self._prune_logs()
        self.starts += 1
        self.log_path = self.config.log_dir / f"webui-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.starts}.log"
        port = free_port()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(port), cwd=self.config.webui_dir, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=offline_environment(self.config.hf_home))
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready()
        return self.url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.ready_timeout_s
        api_up = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the WebUI exited with code {self.process.returncode} while starting; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            text = self.log_text()
            if MODEL_FAILED.search(text):
                raise RuntimeError(f"the WebUI could not load the model; log {self.log_path}:\n{self.log_tail()}")
            api_up = api_up or (STARTED.search(text) is not None and self._answers("/sdapi/v1/sd-models"))
            if api_up and (is_forge_tree(self.config.webui_dir) or MODEL_LOADED.search(text)):
                return
            time.sleep(1.0)
        raise TimeoutError(f"the WebUI was not ready after {self.config.ready_timeout_s:.0f} s "
                           f"(API up: {api_up}); log {self.log_path}:\n{self.log_tail()}")

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the process this object started, by its pid: SIGTERM, then SIGKILL after a grace period."""
        if self.process is None:
            return
        rss = peak_rss_bytes(self.process.pid)
        if rss is not None:
            self.peak_rss = max(rss, self.peak_rss or 0)
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> str:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _prune_logs(self) -> None:
        logs = sorted(self.config.log_dir.glob("webui-*.log"), key=lambda p: p.stat().st_mtime)
        for old in logs[:-KEPT_LOGS]:
            old.unlink(missing_ok=True)
