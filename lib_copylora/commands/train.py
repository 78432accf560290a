"""`python -m lib_copylora train`: train a LoRA (single), or a copy-machine pair (copier or difference route).

    python -m lib_copylora train --route copier --data-a A --data-b B --model MODEL --output OUT
    python -m lib_copylora train --data IMAGES --model MODEL --output OUT

Progress (step, loss, learning rate) goes to stdout; Ctrl-C stops after the current step and saves what was
trained with a resume state (--resume continues it); a second Ctrl-C aborts. Several processes
(`accelerate launch --multi_gpu --num_processes 2 -m lib_copylora train ...`, or torchrun) train data-parallel;
only the main process writes files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .kohya_flags import add_kohya_flags, apply_kohya_flags
from .train_flags import add_config_flags, build_section, dataset_config, section_values

DTYPES = ("auto", "fp32", "fp16", "bf16")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a LoRA, or a copy-machine pair (copier or difference route)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("model and images")
    data.add_argument("--model", type=Path, default=None,
                      help="a diffusers model folder, or a single-file .safetensors/.ckpt checkpoint (kohya: "
                           "--pretrained_model_name_or_path)")
    data.add_argument("--model-config", "--model_config", dest="model_config", type=Path, default=None,
                      help="for single-file checkpoints: a diffusers folder of the same architecture (its configs; "
                           "nothing is downloaded)")
    data.add_argument("--family", choices=("sd1", "sd2", "sdxl"), default=None,
                      help="the model family, when detection from the model's configs is not enough")
    data.add_argument("--v_parameterization", action="store_true",
                      help="the model predicts v (SD2 768-v models); default: what the scheduler config says")
    data.add_argument("--data", type=Path, default=None, help="image folder of the single route")
    data.add_argument("--data-a", "--data_a", dest="data_a", type=Path, default=None,
                      help="image set A (the plain pictures) of the copier and difference routes")
    data.add_argument("--data-b", "--data_b", dest="data_b", type=Path, default=None,
                      help="image set B (the same pictures with the feature) of the copier and difference routes")
    data.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    data.add_argument("--model_dtype", choices=DTYPES, default="auto",
                      help="dtype the base model is held in; auto = the mixed precision on a GPU, fp32 on the CPU")
    data.add_argument("--log_every", type=int, default=0,
                      help="print every n-th step (default: about 20 lines per phase)")
    add_config_flags(parser)
    add_kohya_flags(parser)
    parser.set_defaults(func=run)


def _route_and_data(args) -> tuple[str, Path, Optional[Path]]:
    from ..train.errors import TrainConfigError

    route = section_values(args, "route").get("route") or ("single" if args.data is not None else None)
    if route is None:
        raise TrainConfigError("give --data DIR (single route) or --route copier|difference with --data-a and "
                               "--data-b")
    if route == "single":
        data = args.data or args.data_a
        if data is None or args.data_b is not None:
            raise TrainConfigError("the single route takes one image folder: --data DIR")
        return route, data, None
    if args.data_a is None or args.data_b is None or args.data is not None:
        raise TrainConfigError(f"the {route} route takes two image folders: --data-a DIR --data-b DIR")
    return route, args.data_a, args.data_b


def build_train_config(args, output_dir: Optional[Path] = None):
    """The TrainConfig the command line describes (`output_dir` replaces the output folder, for helper ranks)."""
    from ..train.config import TrainConfig

    apply_kohya_flags(args)  # kohya's spellings onto our settings, once; refuses what CopyLoRA does not do
    route, data_a, data_b = _route_and_data(args)
    seed = section_values(args, "loop").get("seed")
    output_extra = {"output_dir": output_dir} if output_dir is not None else {}
    return TrainConfig(
        network=build_section(args, "network"), optim=build_section(args, "optim"),
        loop=build_section(args, "loop"), loss=build_section(args, "loss"), sample=build_section(args, "sample"),
        output=build_section(args, "output", **output_extra), route=build_section(args, "route", route=route),
        speed=build_section(args, "speed"),
        dataset_a=dataset_config(args, data_a, seed),
        dataset_b=dataset_config(args, data_b, seed) if data_b is not None else None)


def process_device(asked: Optional[str], cuda_available: bool):
    """This process's device. Launched as several processes, each takes the GPU of its local rank (as accelerate
    and torchrun number them), so that no two processes share one GPU."""
    import torch

    from ..core.devices import parse_device
    from ..hosts.data_parallel import launched_world_size
    from ..train.errors import TrainConfigError

    device = parse_device(("cuda" if cuda_available else "cpu") if asked is None else asked)
    if device is None:
        raise TrainConfigError(f"--device {asked!r} is not a device torch knows (cpu, cuda, cuda:1, ...)")
    world = launched_world_size()
    if world > 1 and device.type == "cuda":
        if device.index is not None:
            raise TrainConfigError(f"--device {asked} would put all {world} processes on one GPU: leave --device "
                                   "out (or give cuda), and each process takes the GPU of its local rank")
        local = os.environ.get("LOCAL_RANK", "0")
        if not local.isdigit():
            raise TrainConfigError(f"LOCAL_RANK={local!r} is not a process number; launch with accelerate or "
                                   "torchrun")
        device = torch.device("cuda", int(local))
    return device


def _device_and_dtype(args, precision):
    import torch

    from ..core.devices import device_problem
    from ..train.errors import TrainConfigError

    device = process_device(args.device, torch.cuda.is_available())
    problem = device_problem(device)
    if problem:
        raise TrainConfigError(f"--device {device}: {problem} to train on; use --device cpu, or a torch built for it")
    if args.model_dtype != "auto":
        return device, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.model_dtype]
    return device, (precision.dtype if device.type == "cuda" else torch.float32)


def load_host(args, precision):
    from ..core.family import Family
    from ..hosts.diffusers_host import DiffusersHost
    from ..train.host import Prediction

    device, dtype = _device_and_dtype(args, precision)
    return DiffusersHost.load(args.model, device=device, dtype=dtype, config_dir=args.model_config,
                              family=Family(args.family) if args.family else None,
                              prediction=Prediction.V if args.v_parameterization else None)


@contextmanager
def ctrl_c_stops(host, say) -> Iterator[None]:
    """The first Ctrl-C asks for a stop-and-save after the current step; the second one aborts."""
    presses = []

    def handler(_signum, _frame):
        presses.append(1)
        if len(presses) > 1:
            raise KeyboardInterrupt
        host.request_stop()
        say("stopping after this step and saving (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _helper_output(config_output, rank: int) -> Path:
    """Helper ranks write into a scratch folder (thrown away), seeded with the main output's resume states."""
    scratch = Path(tempfile.mkdtemp(prefix=f"copylora-rank{rank}-"))
    if config_output.output_dir.is_dir():
        for state in config_output.output_dir.glob(f"{config_output.output_name}.*.trainstate"):
            shutil.copy2(state, scratch / state.name)
    return scratch


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever downloaded
    from ..hosts.data_parallel import CommandHost, DataParallel, ShardedSource
    from ..train.callbacks import TrainControl
    from ..core.errors import OutputExists
    from ..train.dataset import ImageDataset
    from ..train.routes import existing_outputs, train
    from .train_report import Reporter

    config = build_train_config(args)
    if config.output.output_dir.exists() and not config.output.output_dir.is_dir():
        raise OutputExists(f"--output {config.output.output_dir} is a file; name a folder")
    existing = existing_outputs(config)
    if existing:  # before the model loads: refusing takes a second, not a minute
        raise OutputExists(f"{existing[0]} exists: pass --overwrite to replace it, or choose another --output_name")
    # every image is read (and an unreadable one refused) before the model loads and long before step 1
    datasets = [ImageDataset(d) for d in (config.dataset_a, config.dataset_b) if d is not None]
    host = load_host(args, config.loop.precision)
    parallel = DataParallel(host.device)
    scratch = None
    if not parallel.is_main:
        scratch = _helper_output(config.output, parallel.rank)
        config = build_train_config(args, output_dir=scratch)
    say = print if parallel.is_main else (lambda *_: None)
    reporter = Reporter(say, config, args.log_every)
    reporter.model(host, parallel)
    for label, dataset in zip(("A", "B") if len(datasets) == 2 else ("images",), datasets):
        reporter.dataset(label, dataset, parallel.world_size)
        started = time.perf_counter()
        if dataset.config.cache_latents:
            count = dataset.cache_latents(host)
            say(f"{label}: cached {count} latents in {time.perf_counter() - started:.1f}s")
    sources = [ShardedSource(d, parallel) for d in datasets]
    control = TrainControl(reduce_gradients=parallel.average_gradients if parallel.enabled else None)
    trainer_host = CommandHost(host, control, parallel)
    try:
        with ctrl_c_stops(trainer_host, say):
            result = train(trainer_host, config, sources[0], sources[1] if len(sources) > 1 else None,
                           reporter.callbacks(), control)
    finally:
        parallel.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    reporter.result(result)
    return 130 if result.stopped else 0
