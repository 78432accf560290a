"""Training inside the WebUI vs the CLI's engine: steps/s on the same architecture, data and settings, and the
WebUI's peak resident memory while training against its idle memory.

Run from the repository root with the WebUI tier's tree (it starts its own server on the tier's fixtures: a
random-weight SD1.5 checkpoint; one WebUI at a time on a shared machine, so take the tier's lock):
    flock TIER_CACHE/webui.lock python bench/webui_train.py --webui-dir PATH/TO/WEBUI [--steps 12]
(TIER_CACHE: the tier's COPYLORA_TEST_CACHE, by default copylora-tests-UID in the temporary folder)
or against a server already running this extension:
    python bench/webui_train.py --url http://127.0.0.1:7860 --pid PID_OF_THE_WEBUI

WebUI side: a run through POST /copylora/v1/train, polled every `--poll` seconds as the tab polls (each poll is
served by the process that trains); its speed is the one the run's status reports: steps/s over the last 10 steps,
end of step to end of step. VmRSS of the WebUI process sampled while idle and during the run. By default the run
has the tab's speed settings (Fastest attention: A1111 trains with its sdp kernel); `--attention TITLE` trains
with that cross-attention optimization instead. CLI side: the same trainer on a DiffusersHost holding SD1.5's
architecture with seeded random weights (the same shapes as the fixture checkpoint, which is random too), the same
images and TrainConfig, timed by its step callback over the same window. The two alternate for `--rounds` rounds
(the idle server keeps its memory meanwhile: about 10 GiB for both), so a load that comes and goes on a shared
machine hits both sides; prints each round and the ratio of the medians.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASET = "bench_set"


def rss_bytes(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("VmRSS:"))) * 1024


def write_images(folder: Path, count: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def window_rate(stamps: dict[int, float], steps: int) -> float:
    """Steps per second the way a run's status reports it (service/jobs.py): over the last RATE_WINDOW steps, from
    the end of one step to the end of the last, so set-up and the first step's warm-up stay out."""
    from lib_copylora.service.jobs import RATE_WINDOW

    first = max(1, steps - RATE_WINDOW)
    return (steps - first) / (stamps[steps] - stamps[first])


def request_body(args) -> dict:
    """The run both sides train. With `--attention` the WebUI trains with that kernel (Fastest attention off);
    the CLI's host_attention then only puts SDPA in place, which its model has already."""
    return {"name": "bench-run", "dataset_a": DATASET, "overwrite": True, "subfolder": "copylora-bench",
            "network": {"rank": 8, "alpha": 1}, "loop": {"max_steps": args.steps, "seed": 0},
            "speed": {"host_attention": args.attention is None},
            "dataset": {"resolution": str(args.resolution), "min_bucket_reso": min(256, args.resolution),
                        "max_bucket_reso": max(1024, args.resolution)}}


def measure_webui(client, pid: int, args) -> dict:
    flags = client.get("/sdapi/v1/cmd-flags")
    root = Path(flags.get("copylora_dir") or Path(flags["data_dir"]) / "copylora")
    write_images(root / "datasets" / DATASET / "1_bench", 2, args.resolution)
    client.txt2img("warm up", 1, steps=2, size=64)  # the built-in restores its own weights; caches warm
    idle = []
    for _ in range(10):
        idle.append(rss_bytes(pid))
        time.sleep(0.2)
    [job_id] = client.post("/copylora/v1/train", request_body(args))["job_ids"]
    peak = 0
    while True:  # at the tab's pace: each poll is served by the process that trains
        status = client.get(f"/copylora/v1/jobs/{job_id}")
        peak = max(peak, rss_bytes(pid))
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(args.poll)
    shutil.rmtree(Path(flags["lora_dir"]) / "copylora-bench", ignore_errors=True)  # the fixtures stay clean
    if status["state"] != "done":
        raise SystemExit(f"the WebUI run ended {status['state']}: {status['error']}")
    if status.get("steps_per_s") is None:
        raise SystemExit("the WebUI reported no speed for the run: is this extension's version the one tested?")
    return {"steps_per_s": status["steps_per_s"], "idle_rss": statistics.median(idle), "peak_rss": peak}


def cli_host():
    from lib_copylora.hosts.diffusers_host import DiffusersHost

    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    bench_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_train)
    return DiffusersHost.from_pipeline(bench_train.sd15_pipeline(seed=0))


def measure_cli(host, dataset_root: Path, args) -> dict:
    import torch

    from lib_copylora.train.callbacks import Callbacks
    from lib_copylora.train.dataset import ImageDataset
    from lib_copylora.train.routes import train
    from lib_copylora.service.train_request import Folders, request_from_dict, to_train_config

    idle = rss_bytes(os.getpid())
    stamps, peak = {}, [idle]

    def on_step(step, _loss, _lr):
        stamps[step] = time.perf_counter()
        peak.append(rss_bytes(os.getpid()))

    with tempfile.TemporaryDirectory() as out:
        folders = Folders(dataset_root, Path(out), Path(out))
        config = to_train_config(request_from_dict(request_body(args)), folders, torch.float32)
        train(host, config, ImageDataset(config.dataset_a), None, Callbacks(on_step=on_step))
    return {"steps_per_s": window_rate(stamps, args.steps), "idle_rss": idle, "peak_rss": max(peak)}


def alternate(client, pid: int, dataset_root: Path, args) -> tuple[list[dict], list[dict]]:
    """WebUI run, CLI run, round after round: a load that comes and goes on a shared machine hits both sides.
    The idle server holds its memory but takes no CPU while the CLI trains."""
    host = cli_host()
    webui, cli = [], []
    for _ in range(args.rounds):
        webui.append(measure_webui(client, pid, args))
        cli.append(measure_cli(host, dataset_root, args))
    return webui, cli


@contextmanager
def attention_setting(client, name: str | None, server=None) -> Iterator[None]:
    """The WebUI's cross-attention optimization set to `name` meanwhile (None: left as it is), then put back.
    A1111 applies the first kernel it has for a name it does not know, so on a server the bench started, its log
    must show the named kernel applied."""
    from tests.webui.logscan import attention_kernels_applied

    if name is None:
        yield
        return
    option = "cross_attention_optimization"
    before = client.get("/sdapi/v1/options")[option]
    log_start = len(server.log_text()) if server is not None else 0
    client.post("/sdapi/v1/options", {option: name})
    try:
        if server is not None:
            applied = attention_kernels_applied(server.log_text()[log_start:])
            if not applied or applied[-1] != name.split(" - ")[0]:
                raise SystemExit(f"the WebUI applied {applied[-1] if applied else 'nothing'} for --attention {name!r}: "
                                 "give the setting's full title (e.g. 'sdp - scaled dot product', 'InvokeAI')")
        yield
    finally:
        client.post("/sdapi/v1/options", {option: before})


def report(webui: list[dict], cli: list[dict], args) -> None:
    gib = 2 ** 30
    rates = lambda runs: [r["steps_per_s"] for r in runs]  # noqa: E731
    w, c = statistics.median(rates(webui)), statistics.median(rates(cli))
    print(f"steps {args.steps} (timed from the end of step {max(1, args.steps - 10)}), {args.resolution}px, rank 8, "
          f"fp32, CPU threads {os.environ.get('OMP_NUM_THREADS', 'default')}, {args.rounds} alternating rounds, "
          f"WebUI cross-attention {args.attention or 'Fastest attention (default)'} (CLI: PyTorch SDPA)")
    print("WebUI steps/s per round: " + ", ".join(f"{r:.3f}" for r in rates(webui)))
    print("CLI   steps/s per round: " + ", ".join(f"{r:.3f}" for r in rates(cli)))
    print("ratio per round:         " + ", ".join(f"{a / b:.2f}" for a, b in zip(rates(webui), rates(cli))))
    idle, peak = webui[0]["idle_rss"], max(r["peak_rss"] for r in webui)
    print(f"WebUI: median {w:.3f} steps/s; RSS idle {idle / gib:.2f} GiB, peak while training {peak / gib:.2f} GiB")
    print(f"CLI:   median {c:.3f} steps/s; RSS after loading {cli[0]['idle_rss'] / gib:.2f} GiB, peak while "
          f"training {max(r['peak_rss'] for r in cli) / gib:.2f} GiB")
    print(f"ratio WebUI/CLI steps/s (medians): {w / c:.2f}")
    print(f"ratio WebUI peak/idle RSS: {peak / idle:.2f} (+{(peak - idle) / gib:.2f} GiB)")


def start_server(webui_dir: Path):
    from tests.webui.conftest import REPO_ROOT, find_bpe_vocab, install_extension
    from tests.webui.fixtures.cache import default_cache_dir, ensure_fixtures
    from tests.webui.server import ServerConfig, WebuiServer

    python = webui_dir / "venv" / "bin" / "python"
    cache = default_cache_dir()
    fixtures = ensure_fixtures(cache, find_bpe_vocab(python))
    data_dir = cache / "webui-data-bench"
    install_extension(data_dir / "extensions", REPO_ROOT)
    return WebuiServer(ServerConfig(webui_dir=webui_dir, python=python, data_dir=data_dir,
                                    checkpoint=fixtures.checkpoint, lora_dir=fixtures.lora_dir,
                                    hf_home=fixtures.hf_home, log_dir=cache / "logs"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--webui-dir", type=Path, help="a prepared WebUI tree: start a server on the fixtures")
    parser.add_argument("--url", help="a running WebUI with this extension (then --pid is needed)")
    parser.add_argument("--pid", type=int, help="process id of that WebUI, for its memory")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between status requests (the tab: 2)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating WebUI/CLI runs; medians are compared")
    parser.add_argument("--attention", default=None, help="train in the WebUI with this cross-attention "
                        "optimization, as its setting titles it, and Fastest attention off (e.g. InvokeAI, the "
                        "kernel A1111's Automatic picks on a CPU, or 'sdp - scaled dot product'); default: "
                        "Fastest attention on, as in a run with the tab's defaults")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3: the speed is timed from the end of step 1")
    from tests.webui.client import WebuiClient

    server = None
    if args.webui_dir is not None:
        server = start_server(args.webui_dir.resolve())
        client, pid = WebuiClient(server.start()), server.pid
    elif args.url and args.pid:
        client, pid = WebuiClient(args.url), args.pid
    else:
        parser.error("give --webui-dir, or --url with --pid")
    try:
        flags = client.get("/sdapi/v1/cmd-flags")
        dataset_root = Path(flags.get("copylora_dir") or Path(flags["data_dir"]) / "copylora") / "datasets"
        with attention_setting(client, args.attention, server):
            webui, cli = alternate(client, pid, dataset_root, args)
    finally:
        if server is not None:
            server.stop()
    report(webui, cli, args)

if __name__ == "__main__":
    main()
