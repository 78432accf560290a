"""`TrainConfig` and its parts: every training setting, validated once where it is made (docs/architecture.md §8).

Defaults follow what copier users publish (docs/architecture.md §8): LoRA rank 8 / alpha 1, AdamW, learning rate
1e-4, constant schedule. The CLI and the WebUI tab turn their inputs into these objects exactly once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch

from ..core.errors import CopyLoraError
from ..core.merge import MergeSpec
from ..core.output_names import output_name_problem
from .data_config import DatasetConfig
from .errors import TrainConfigError
from .field_checks import FieldChecks

# Upper bounds far above any real use, so that a typo (an extra zero, 1e20) is refused at once instead of failing
# after the model has loaded (a rank of 1e20 overflows inside torch).
MAX_RANK = 1024
MAX_LEARNING_RATE = 10.0  # adaptive optimisers (Prodigy) use 1; LoRA learning rates are around 1e-4
MAX_CLIP_SKIP = 12  # the WebUI's own limit; a host with fewer text-encoder layers checks its own


class NetworkKind(enum.Enum):
    LORA = "lora"  # kohya's LoRA (LierLa): attention, feed-forward and projection layers only
    LOCON = "locon"  # LoRA plus the ResNet and sampler convolutions (LyCORIS LoCon)
    LOHA = "loha"
    LOKR = "lokr"

    @property
    def trains_conv_blocks(self) -> bool:
        return self is not NetworkKind.LORA


class OptimizerKind(enum.Enum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"
    LION = "lion"
    PRODIGY = "prodigy"


class SchedulerKind(enum.Enum):
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"


class Precision(enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.value]

    @property
    def kohya_name(self) -> str:
        """What kohya writes to `ss_mixed_precision`."""
        return "no" if self is Precision.FP32 else self.value


class Route(enum.Enum):
    SINGLE = "single"  # one LoRA on one image set
    COPIER = "copier"  # train A; train B on base + A (frozen, in memory); result B
    DIFFERENCE = "difference"  # train A and B on the base; result B − A


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def _enum(value, kind: type[enum.Enum], name: str):
    """Accept the enum or its value ("lora", "cosine"): the CLI and the UI hand over strings."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(k.value for k in kind)
        raise TrainConfigError(f"{name} {value!r} is not one of: {choices}") from None


_checks = FieldChecks(TrainConfigError)
_number, _positive, _whole, _seed, check_flags = (_checks.number, _checks.positive, _checks.whole, _checks.seed,
                                                  _checks.flags)


@dataclass(frozen=True)
class NetworkConfig:
    kind: NetworkKind = _help("lora (attention/feed-forward/projections), locon (+ ResNet convs), loha or lokr",
                              default=NetworkKind.LORA)
    rank: int = _help("rank (kohya's network_dim) of Linear and 1×1 conv modules", default=8)
    alpha: float = _help("network alpha; the weight scale is alpha / rank (users keep it at most rank / 2)",
                         default=1.0)
    conv_rank: Optional[int] = _help("rank of k×k convolutions for locon/loha/lokr; None = same as rank",
                                     default=None)
    conv_alpha: Optional[float] = _help("alpha of k×k convolutions; None = same as alpha", default=None)
    train_text_encoder: bool = _help("also put modules on the text encoder(s), with their own learning rate",
                                     default=False)
    use_tucker: bool = _help("Tucker decomposition for k×k convolutions (LyCORIS use_tucker)", default=False)
    lokr_factor: int = _help("LoKr Kronecker factor; -1 picks the most balanced split", default=-1)
    dora: bool = _help("DoRA for lora/locon: LyCORIS' weight decomposition, a learned magnitude per input channel "
                       "saved as `dora_scale` the way the WebUI applies it; merging the result needs the base "
                       "model", default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _enum(self.kind, NetworkKind, "network kind"))
        check_flags(self)
        if self.dora and self.kind not in (NetworkKind.LORA, NetworkKind.LOCON):
            raise TrainConfigError(f"dora works with lora and locon networks, not {self.kind.value}")
        _whole(self, "rank", upper=MAX_RANK)
        _positive("alpha", self.alpha, allow_zero=True, upper=MAX_RANK)
        if self.conv_rank is not None:
            _whole(self, "conv_rank", upper=MAX_RANK)
        if self.conv_alpha is not None:
            _positive("conv_alpha", self.conv_alpha, allow_zero=True, upper=MAX_RANK)
        _whole(self, "lokr_factor", lower=-1, upper=MAX_RANK)
        if self.lokr_factor == 0:
            raise TrainConfigError(f"lokr_factor must be -1 or > 0, not {self.lokr_factor}")

    @property
    def effective_conv_rank(self) -> int:
        return self.rank if self.conv_rank is None else self.conv_rank

    @property
    def effective_conv_alpha(self) -> float:
        return self.alpha if self.conv_alpha is None else self.conv_alpha


@dataclass(frozen=True)
class OptimConfig:
    optimizer: OptimizerKind = _help("adamw, adamw8bit (needs bitsandbytes), lion or prodigy (needs prodigyopt)",
                                     default=OptimizerKind.ADAMW)
    learning_rate: float = _help("learning rate of the UNet modules (Prodigy: use 1.0)", default=1e-4)
    text_encoder_lr: Optional[float] = _help("learning rate of the text-encoder modules; None = learning_rate",
                                             default=None)
    weight_decay: Optional[float] = _help("decoupled weight decay; None = the optimiser's usual: 0.01 for AdamW and "
                                          "AdamW 8-bit, 0 for Lion and Prodigy (as kohya's scripts)", default=None)
    betas: Optional[tuple[float, float]] = _help("momentum coefficients (β1, β2); None = the optimiser's usual "
                                                 "ones: (0.9, 0.99) for Lion, (0.9, 0.999) otherwise", default=None)
    eps: float = _help("AdamW/Prodigy epsilon", default=1e-8)
    scheduler: SchedulerKind = _help("constant, constant_with_warmup, linear, cosine or cosine_with_restarts",
                                     default=SchedulerKind.CONSTANT)
    warmup_steps: int = _help("steps of linear warm-up from 0 (not with the plain constant schedule)", default=0)
    num_cycles: int = _help("restarts of cosine_with_restarts", default=1)
    max_grad_norm: float = _help("clip the gradient norm to this; 0 = no clipping", default=1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimizer", _enum(self.optimizer, OptimizerKind, "optimizer"))
        object.__setattr__(self, "scheduler", _enum(self.scheduler, SchedulerKind, "scheduler"))
        if self.betas is not None:
            betas = tuple(self.betas) if isinstance(self.betas, (tuple, list)) else (self.betas,)
            for beta in betas:
                _number("betas", beta)
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise TrainConfigError(f"betas must be two numbers in [0, 1), not {self.betas}")
            object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        _positive("learning_rate", self.learning_rate, upper=MAX_LEARNING_RATE)
        if self.text_encoder_lr is not None:
            _positive("text_encoder_lr", self.text_encoder_lr, upper=MAX_LEARNING_RATE)
        if self.weight_decay is not None:
            _positive("weight_decay", self.weight_decay, allow_zero=True, upper=10.0)
        _positive("eps", self.eps, upper=1.0)
        _whole(self, "warmup_steps", allow_zero=True)
        if self.warmup_steps and self.scheduler is SchedulerKind.CONSTANT:
            raise TrainConfigError("warmup_steps needs a schedule with warm-up: pick constant_with_warmup, "
                                   "linear, cosine or cosine_with_restarts")
        _whole(self, "num_cycles")
        _positive("max_grad_norm", self.max_grad_norm, allow_zero=True)

    @property
    def effective_betas(self) -> tuple[float, float]:
        if self.betas is not None:
            return self.betas
        return (0.9, 0.99) if self.optimizer is OptimizerKind.LION else (0.9, 0.999)

    @property
    def effective_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.01 if self.optimizer in (OptimizerKind.ADAMW, OptimizerKind.ADAMW_8BIT) else 0.0

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int = _help("optimizer steps per LoRA; 0 = run `epochs` full epochs", default=0)
    epochs: int = _help("passes over the image set (with its repeats) when max_steps is 0", default=1)
    gradient_accumulation_steps: int = _help("batches summed per optimizer step (a larger batch in less memory)",
                                             default=1)
    precision: Precision = _help("autocast dtype: fp32, fp16 (with a gradient scaler on CUDA) or bf16",
                                 default=Precision.FP32)
    gradient_checkpointing: bool = _help("recompute activations in backward to save memory (when the host can)",
                                         default=False)
    clip_skip: int = _help("use the text encoder's n-th layer from the end (1 = last)", default=1)
    seed: int = _help("seed of the module initialisation, noise and timesteps", default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", _enum(self.precision, Precision, "precision"))
        check_flags(self)
        _whole(self, "max_steps", allow_zero=True)
        _whole(self, "epochs", upper=100_000)
        _whole(self, "gradient_accumulation_steps", upper=1024)
        _whole(self, "clip_skip", upper=MAX_CLIP_SKIP)
        _seed(self)


@dataclass(frozen=True)
class LossConfig:
    noise_offset: float = _help("add this much per-channel constant noise (brighter/darker images); 0 = off",
                                default=0.0)
    min_snr_gamma: Optional[float] = _help("min-SNR-γ loss weighting (5 is usual); None = off", default=None)

    def __post_init__(self) -> None:
        _positive("noise_offset", self.noise_offset, allow_zero=True, upper=10.0)
        if self.min_snr_gamma is not None:
            _positive("min_snr_gamma", self.min_snr_gamma)


@dataclass(frozen=True)
class SampleConfig:
    prompts: tuple[str, ...] = _help("preview prompts; empty = no previews", default=())
    every_n_steps: int = _help("render previews every n optimizer steps; 0 = only at the end", default=0)
    every_n_epochs: int = _help("also render previews at the end of every n-th epoch; 0 = off", default=0)
    steps: int = _help("DDIM steps per preview", default=20)
    guidance_scale: float = _help("classifier-free guidance scale of previews", default=7.0)
    seed: int = _help("seed of the preview noise (the same with and without the LoRA)", default=0)

    def __post_init__(self) -> None:
        prompts = (self.prompts,) if isinstance(self.prompts, str) else self.prompts
        if not isinstance(prompts, (tuple, list)) or not all(isinstance(p, str) for p in prompts):
            raise TrainConfigError(f"prompts must be a list of texts, not {self.prompts!r}")
        object.__setattr__(self, "prompts", tuple(prompts))
        _whole(self, "every_n_steps", allow_zero=True)
        _whole(self, "every_n_epochs", allow_zero=True)
        _whole(self, "steps", upper=1000)
        _positive("guidance_scale", self.guidance_scale, allow_zero=True, upper=100.0)
        _seed(self)


@dataclass(frozen=True)
class OutputConfig:
    output_dir: Path = _help("folder the LoRA (and its resume state) is written to", default=Path("."))
    output_name: str = _help("file name without extension; also the card name (ss_output_name)", default="copylora")
    save_precision: Precision = _help("dtype of the saved tensors: fp16, bf16 or fp32", default=Precision.FP16)
    overwrite: bool = _help("replace an existing output file", default=False)
    save_every_n_steps: int = _help("also save the LoRA being trained every n steps; 0 = off", default=0)
    save_every_n_epochs: int = _help("also save the LoRA being trained every n epochs; 0 = off", default=0)
    save_state: bool = _help("write a resume state beside the output at every save and at the end", default=False)
    resume: bool = _help("continue from the resume state beside the output when there is one", default=False)
    training_comment: Optional[str] = _help("a note kept in the file's metadata (ss_training_comment), such as its "
                                            "trigger word; None = none", default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, (str, Path)) or "\0" in str(self.output_dir):
            raise TrainConfigError(f"output_dir {self.output_dir!r} is not a folder path")
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        object.__setattr__(self, "save_precision", _enum(self.save_precision, Precision, "save_precision"))
        check_flags(self)
        # only plain spaces are trimmed: any other whitespace is a character the name rule refuses
        name = self.output_name.strip(" ") if isinstance(self.output_name, str) else self.output_name
        problem = output_name_problem(name)
        if problem:
            raise TrainConfigError(f"output_name: {problem}")
        object.__setattr__(self, "output_name", name)
        object.__setattr__(self, "training_comment", _checks.note("training_comment", self.training_comment))
        _whole(self, "save_every_n_steps", allow_zero=True)
        _whole(self, "save_every_n_epochs", allow_zero=True)

    def path(self, suffix: str = "") -> Path:
        return self.output_dir / f"{self.output_name}{suffix}.safetensors"


@dataclass(frozen=True)
class RouteConfig:
    route: Route = _help("single, copier (train B on base + A) or difference (B − A)", default=Route.SINGLE)
    keep_parts: bool = _help("also save A (and B, for difference) beside the result as NAME_A / NAME_B",
                             default=False)
    new_rank: Optional[int] = _help("difference route: re-rank B − A to this rank by SVD; None = exact "
                                    "(rank of A + rank of B)", default=None)
    new_conv_rank: Optional[int] = _help("difference route: rank of k×k conv modules after re-ranking; None = "
                                         "new_rank", default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "route", _enum(self.route, Route, "route"))
        check_flags(self)
        for name in ("new_rank", "new_conv_rank"):
            value = getattr(self, name)
            if value is not None:
                _whole(self, name, upper=2 * MAX_RANK)
                if self.route is not Route.DIFFERENCE:
                    raise TrainConfigError(f"{name} only applies to the difference route")
        if self.route is Route.DIFFERENCE:
            self.difference_spec("copylora")  # the merge's own rules, checked before A and B are trained

    def difference_spec(self, output_name: str) -> MergeSpec:
        """The merge that ends the difference route: B at +1, A at −1, re-ranked when asked."""
        try:
            return MergeSpec(ratios=(1.0, -1.0), new_rank=self.new_rank, new_conv_rank=self.new_conv_rank,
                             output_name=output_name)
        except CopyLoraError as exc:
            raise TrainConfigError(str(exc)) from None


class CompileMode(enum.Enum):
    OFF = "off"
    BLOCKS = "blocks"  # torch.compile each transformer block (the LoRA hooks inside are traced with it)
    GRAPHS = "graphs"  # as blocks, plus CUDA graphs (mode "reduce-overhead"): CUDA and one batch shape only
    UNET = "unet"  # torch.compile the whole UNet: its forward is one graph, and so is its backward
    UNET_GRAPHS = "unet-graphs"  # as unet, plus CUDA graphs: nearly the whole step replays as recorded kernels

    @property
    def whole_unet(self) -> bool:
        return self in (CompileMode.UNET, CompileMode.UNET_GRAPHS)

    @property
    def cuda_graphs(self) -> bool:
        return self in (CompileMode.GRAPHS, CompileMode.UNET_GRAPHS)


SETTLE_STEPS = 3  # training steps in a row with every guard checked before `skip_guards` skips them


@dataclass(frozen=True)
class SpeedConfig:
    """How fast, not what: none of these changes what is learned beyond float rounding (`fused_lowrank`,
    `cache_text_encoder`, `skip_guards` and `read_loss_every` change nothing at all), and a resume state fits any of
    them."""

    fused_lowrank: bool = _help("run LoRA/LoCon modules through our own low-rank forward instead of lycoris' "
                                "per-call dispatch (identical results and files; LoHa, LoKr and DoRA always use "
                                "lycoris)", default=True)
    fused_optimizer: bool = _help("AdamW as one fused kernel (foreach where torch has no fused one for the device) "
                                  "and foreach gradient clipping: a few large ops per step instead of several per "
                                  "tensor", default=True)
    cache_text_encoder: bool = _help("while the text encoder is frozen, encode each distinct batch of captions "
                                     "once (the copier's caption-less sets encode once per run)", default=True)
    host_attention: bool = _help("train with the fastest attention kernel the host offers, and put the host's "
                                 "own back afterwards: PyTorch SDPA (the diffusers host's; A1111's sdp in place of "
                                 "a sliced kernel such as Doggettx or InvokeAI; xformers stays; Forge trains with "
                                 "SDPA always)", default=True)
    compile: CompileMode = _help("off; blocks = torch.compile each transformer block; unet = torch.compile the "
                                 "whole UNet as one graph (fewest launches; its first step compiles for minutes); "
                                 "graphs, unet-graphs = the same plus CUDA graphs, when on CUDA and every batch has "
                                 "one shape. Falls back to eager with a log line where the platform cannot compile; "
                                 "previews always run eagerly", default=CompileMode.OFF)
    skip_guards: bool = _help(f"with compile on and every batch of one shape: once {SETTLE_STEPS} steps in a row have "
                              "run (counted anew after each preview or save), TorchDynamo checks only the guards "
                              "that tell its compiled graphs apart and the inputs' shapes and types, not every "
                              "attribute of every module (milliseconds of CPU per step; identical results; an input "
                              "that fits no graph still compiles one; needs torch 2.6 or later)", default=True)
    read_loss_every: int = _help("read the loss back from the device every n steps (each read waits for the GPU); "
                                 "step callbacks for those steps run then, and a diverged loss is caught within n "
                                 "steps", default=1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compile", _enum(self.compile, CompileMode, "compile"))
        _positive("read_loss_every", self.read_loss_every)


@dataclass(frozen=True)
class TrainConfig:
    """One training job: a route and the settings its LoRAs are trained with (the same for A and B)."""

    network: NetworkConfig = _help("the LoRA modules", default_factory=NetworkConfig)
    optim: OptimConfig = _help("optimiser and learning-rate schedule", default_factory=OptimConfig)
    loop: LoopConfig = _help("steps, precision, seed", default_factory=LoopConfig)
    loss: LossConfig = _help("noise offset and loss weighting", default_factory=LossConfig)
    sample: SampleConfig = _help("preview images", default_factory=SampleConfig)
    output: OutputConfig = _help("where and how the result is saved", default_factory=OutputConfig)
    route: RouteConfig = _help("single, copier or difference", default_factory=RouteConfig)
    speed: SpeedConfig = _help("fused paths, compilation, caching: how fast, not what", default_factory=SpeedConfig)
    dataset_a: Optional[DatasetConfig] = _help("image set A (the only set of the single route)", default=None)
    dataset_b: Optional[DatasetConfig] = _help("image set B (copier and difference routes)", default=None)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            wanted = {"network": NetworkConfig, "optim": OptimConfig, "loop": LoopConfig, "loss": LossConfig,
                      "sample": SampleConfig, "output": OutputConfig, "route": RouteConfig,
                      "speed": SpeedConfig}.get(f.name)
            if wanted is not None and not isinstance(value, wanted):
                raise TrainConfigError(f"TrainConfig.{f.name} must be a {wanted.__name__}, not {type(value).__name__}")
        for name in ("dataset_a", "dataset_b"):
            if not isinstance(getattr(self, name), (DatasetConfig, type(None))):
                raise TrainConfigError(f"TrainConfig.{name} must be a DatasetConfig or None")
        if self.route.route is not Route.SINGLE and self.dataset_a is not None and self.dataset_b is None:
            raise TrainConfigError(f"the {self.route.route.value} route needs image set B as well as A")
