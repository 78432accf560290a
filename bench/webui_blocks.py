"""Block weights on the real WebUI: per-image time against the plain LoRA, and LoRA file opens while presets switch.

    COPYLORA_WEBUI_DIR=... COPYLORA_WEBUI_PYTHON=... python bench/webui_blocks.py [--rounds 3] [--per-round 3]

Starts the same server as the `webui` test tier (fixture checkpoint and LoRAs, offline, CPU), then:
1. time: rounds of `<lora:x:0.8>` and `<lora:x:0.8:MIDD>` images (64×64, 4 steps), alternating by round so that
   drift hits both; the first image of each round pays the re-merge and is left out ("once applied"). Prints the
   median per-image time of each and their ratio (target: within 3 %).
2. file opens: watches the LoRA folder with inotify during an X/Y/Z plot over four presets (after one warm-up
   image) and prints how many times the LoRA file was opened (target: 0; switching presets re-merges in memory).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.webui.client import XYZ_SCRIPT  # noqa: E402
from tests.webui.conftest import WebuiSettings, exclusive_lock, find_bpe_vocab, install_extension  # noqa: E402
from tests.webui.fixtures.cache import ensure_fixtures  # noqa: E402
from tests.webui.fixtures.make_loras import network_name  # noqa: E402
from tests.webui.client import WebuiClient  # noqa: E402
from tests.webui.server import ServerConfig, WebuiServer  # noqa: E402

PROMPT = "a red cube on a wooden table"
IN_OPEN = 0x20


class OpenCounter:
    """Counts IN_OPEN events per file name in one folder (Linux inotify through libc)."""

    def __init__(self, folder: Path):
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_OPEN) < 0:
            raise OSError(ctypes.get_errno(), "inotify is not available here")

    def drain(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return counts
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
                counts[name] = counts.get(name, 0) + 1
                offset += 16 + length


def time_one(client: WebuiClient, prompt: str) -> float:
    started = time.perf_counter()
    client.txt2img(prompt, 1234, steps=4)
    return time.perf_counter() - started


def measure_times(client: WebuiClient, lora: str, rounds: int, per_round: int) -> dict[str, list[float]]:
    prompts = {"plain": f"{PROMPT} <lora:{lora}:0.8>", "MIDD": f"{PROMPT} <lora:{lora}:0.8:MIDD>"}
    times: dict[str, list[float]] = {k: [] for k in prompts}
    for r in range(rounds):
        order = list(prompts) if r % 2 == 0 else list(reversed(prompts))
        for key in order:
            time_one(client, prompts[key])  # pays the re-merge after the switch
            times[key] += [time_one(client, prompts[key]) for _ in range(per_round)]
    return times


def count_opens(client: WebuiClient, lora: str, lora_dir: Path) -> int:
    client.txt2img(f"{PROMPT} <lora:{lora}:1>", 1)  # loaded and hashed once, as in normal use
    counter = OpenCounter(lora_dir)
    counter.drain()
    axis = client.xyz_axis_index("CopyLoRA: block preset")
    args = [axis, "face, OUTALL, MIDD, ALL", [], 0, "", [], 0, "", [], True, False, False, False, False, False,
            False, 0, True]
    client.post("/sdapi/v1/txt2img", {"prompt": f"{PROMPT} <lora:{lora}:1>", "seed": 1, "steps": 2, "width": 64,
                                      "height": 64, "sampler_name": "Euler", "script_name": XYZ_SCRIPT,
                                      "script_args": args})
    opens = counter.drain()
    return sum(n for name, n in opens.items() if name.startswith(lora))


def start_server(settings: WebuiSettings):
    fixtures = ensure_fixtures(settings.cache_dir, find_bpe_vocab(settings.python))
    data_dir = settings.cache_dir / "webui-data-bench"
    install_extension(data_dir / "extensions", REPO)
    server = WebuiServer(ServerConfig(
        webui_dir=settings.webui_dir, python=settings.python, data_dir=data_dir, checkpoint=fixtures.checkpoint,
        lora_dir=fixtures.lora_dir, hf_home=fixtures.hf_home, log_dir=settings.cache_dir / "logs"))
    return server, WebuiClient(server.start(), server=server), fixtures.lora_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=3)
    args = parser.parse_args()
    settings = WebuiSettings.from_env()
    if settings.webui_dir is None:
        print("set COPYLORA_WEBUI_DIR (and COPYLORA_WEBUI_PYTHON) to a prepared WebUI tree", file=sys.stderr)
        return 2
    with exclusive_lock(settings.cache_dir / "webui.lock"):  # one 9 GB server at a time, as in the test tier
        return run(settings, args)


def run(settings: WebuiSettings, args) -> int:
    server, client, lora_dir = start_server(settings)
    try:
        lora = network_name("lora")
        times = measure_times(client, lora, args.rounds, args.per_round)
        plain, midd = statistics.median(times["plain"]), statistics.median(times["MIDD"])
        print(f"per-image time, median of {len(times['plain'])}: <lora:x:0.8> {plain:.3f} s, "
              f"<lora:x:0.8:MIDD> {midd:.3f} s, ratio {midd / plain:.3f} (target within 1.03)")
        opens = count_opens(client, lora, lora_dir)
        print(f"LoRA file opens during a 4-preset X/Y/Z plot: {opens} (target 0: presets re-merge in memory)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
