"""Everything a run steps through, built from its config: device, precision, layout, loaders, optimizer, schedule.

``prepare`` is the one place where hardware choices touch the model: the device and memory format,
cuDNN autotuning, the cheaper CPU dropout mask, ``torch.compile``. Model files stay plain PyTorch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from config import Config, TrainConfig
from core.errors import UserError
from data import ImageData, TensorLoader, mixup_cutmix, train_transform
from train.cpu_dropout import use_cpu_dropout
from train.distributed import Dist


def seed_everything(seed: int) -> None:
    """Python's and torch's global generators (CPU and every CUDA device): initial weights, dropout, MixUp."""
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str, dist: Dist = Dist()) -> torch.device:
    """``train.device`` (auto, cpu, cuda) as a device; with several processes on CUDA, the GPU numbered
    LOCAL_RANK (made the current one)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' requested but CUDA is not available here; valid: auto, cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if not dist.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if dist.local_rank >= count:
        raise UserError(f"torchrun: LOCAL_RANK {dist.local_rank} but this node sees {count} GPU(s); start at most "
                        f"--nproc_per_node={count} processes per node, or set train.device: cpu")
    torch.cuda.set_device(dist.local_rank)
    return torch.device("cuda", dist.local_rank)


# Overrides the CPU's detected bf16 units for ``precision: auto``: 1 = behave as on a CPU with them, 0 = as on
# one without, unset or auto = detect. One machine can so run both branches (the tests do, .ci/run).
CPU_BF16_ENV = "VITLAB_CPU_BF16"
_FORCED = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls in hardware, where bf16 autocast pays off for training
    (``VITLAB_CPU_BF16`` overrides the detection)."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if forced in _FORCED:
        return _FORCED[forced]
    if forced not in ("", "auto"):
        raise UserError(f"{CPU_BF16_ENV}={os.environ[CPU_BF16_ENV]!r} is not a setting; valid: 1 (the CPU has bf16 "
                        f"units), 0 (it has none), auto or unset (detect them)")
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@dataclass
class Precision:
    """Autocast settings for one device: dtype None means plain fp32."""

    device_type: str
    dtype: Optional[torch.dtype] = None

    @classmethod
    def for_device(cls, device: torch.device, precision: str = "auto") -> "Precision":
        """``train.precision`` on ``device``: auto picks what pays off there, fp32/bf16/fp16 are taken as asked."""
        if precision == "fp32":
            return cls(device.type)
        if precision in ("bf16", "fp16"):
            return cls(device.type, torch.bfloat16 if precision == "bf16" else torch.float16)
        if device.type == "cuda":
            return cls("cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        if device.type == "cpu" and cpu_has_native_bf16():
            return cls("cpu", torch.bfloat16)  # 1.35-2.25x faster training on an AMX CPU (BENCHMARKS.md)
        return cls(device.type)  # fp32: bf16 autocast is slower than fp32 on CPUs without bf16 units (AVX2)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @property
    def needs_scaler(self) -> bool:  # fp16 gradients underflow without loss scaling
        return self.dtype == torch.float16

    def __str__(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).removeprefix("torch.")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm parameters (1-D tensors), as timm and DeiT do."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Device types whose optimizer is fused by default: on the CPU it measured 1.00x (python -m bench.ab --setting
# fused_optimizer, BENCHMARKS.md).
FUSED_OPTIMIZER_ON = ("cuda",)


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = False) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    extra = {"fused": True} if fused else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, **extra)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, **extra)
    raise AssertionError(cfg.optimizer)  # config validation lists the choices


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> lr_scheduler.LRScheduler:
    """torch's schedulers, stepped once per optimizer step (epoch-based settings converted to steps).

    A warmup of W steps is ``LinearLR`` from lr/W to lr at its last step (step k runs at (k+1)/W of
    lr), then the schedule, whose epochs (``milestones``, ``step_size``) count from the start of
    training. ``onecycle`` uses the warmup as its ramp (peak at step W-1; default 30% of training).
    """
    total = cfg.epochs * steps_per_epoch
    warmup = min(total, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle":
        # OneCycleLR peaks at step pct_start * total - 1 and needs a ramp of at least 2 steps and an
        # annealing phase of at least 1. The lr curve only: cycling AdamW's beta1 / SGD's momentum too
        # (torch's default) is a separate recipe.
        ramp = warmup or round(0.3 * total)
        ramp = min(max(ramp, 2), total - 1)
        if total < 3:
            return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)  # too short to cycle
        return lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, cycle_momentum=False,
                                       pct_start=ramp / total)
    after = total - warmup
    if cfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, after), eta_min=cfg.min_lr)
    elif cfg.schedule == "multistep":
        main = lr_scheduler.MultiStepLR(optimizer, [m * steps_per_epoch - warmup for m in cfg.milestones],
                                        gamma=cfg.gamma)
    elif cfg.schedule == "step":  # every step_size epochs from the start: StepLR when there is no warmup
        every = cfg.step_size * steps_per_epoch
        main = (lr_scheduler.StepLR(optimizer, every, gamma=cfg.gamma) if not warmup else
                lr_scheduler.MultiStepLR(optimizer, [m - warmup for m in range(every, total + 1, every)
                                                     if m > warmup], gamma=cfg.gamma))
    else:
        main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 1:
        return main  # a 1-step warmup ramps from lr to lr: nothing to do
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup - 1)
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def global_batch(cfg: TrainConfig, world_size: int = 1) -> int:
    """Images per optimizer step over all processes: batch_size x accumulate_steps x processes."""
    return cfg.batch_size * cfg.accumulate_steps * world_size


def scaled_lr(cfg: TrainConfig, world_size: int = 1) -> float:
    """The peak lr a run uses: ``train.lr``, scaled by ``lr_scaling`` with the global batch against
    ``lr_reference_batch`` (linear: Goyal et al.'s rule; sqrt: the square root of that ratio)."""
    ratio = global_batch(cfg, world_size) / cfg.lr_reference_batch
    if cfg.lr_scaling == "linear":
        return cfg.lr * ratio
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(ratio)
    return cfg.lr


def make_loaders(cfg: Config, data: ImageData, device: torch.device, channels_last: bool = False,
                 dist: Dist = Dist()) -> tuple[TensorLoader, TensorLoader]:
    """The training loader (shuffled, augmented, seeded from ``cfg.seed``) and the validation loader.

    Alone, ``data`` is on ``device``. With several processes it is on the host: every process draws the
    same order from ``cfg.seed`` and takes its slice of each global batch (``TensorLoader(shard=...)``),
    augments with its own generator, and validates on its contiguous part of the validation split."""
    spec = data.spec
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    common = dict(mean=spec.mean, std=spec.std, channels_last=channels_last)
    transform = train_transform(spec.augment if cfg.data.augment else "none", spec.image_size,
                                cfg.data.auto_augment)
    shard = {}
    val_x, val_y = data.val
    if dist.enabled:
        aug = torch.Generator(device=device)
        aug.manual_seed((cfg.seed + 1_000_003 * (dist.rank + 1)) % 2 ** 63)  # a stream of its own per process
        shard = dict(shard=(dist.rank, dist.world_size), aug_generator=aug)
        part = torch.tensor_split(torch.arange(len(val_y)), dist.world_size)[dist.rank]
        val_x, val_y = val_x[part].to(device), val_y[part].to(device)
    # A loader batch is one optimizer step's data (accumulate_steps micro-batches, split by train_step), so
    # the loader's position, the schedule and the checkpoints all count optimizer steps.
    train = TensorLoader(*data.train, batch_size=cfg.train.batch_size * cfg.train.accumulate_steps, shuffle=True, drop_last=True,
                         transform=transform, generator=gen, erase_prob=cfg.data.random_erasing, **shard, **common)
    val = TensorLoader(val_x, val_y, batch_size=cfg.train.eval_batch_size, **common)
    if len(train) == 0:
        per = (f" x {cfg.train.accumulate_steps} accumulate_steps" if cfg.train.accumulate_steps > 1 else "") \
            + (f" x {dist.world_size} processes" if dist.enabled else "")
        raise UserError(f"train.batch_size: {cfg.train.batch_size}{per} is larger than the {len(data.train[1])} "
                        f"training samples; lower it or raise data.limit_train")
    return train, val


@dataclass
class Setup:
    """Everything one training run (or a benchmark of it) steps through."""

    model: nn.Module  # what the training steps call: compiled when train.compile is set, DDP-wrapped
    module: nn.Module  # the plain module: its state_dict, eager inference, inspection
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: lr_scheduler.LRScheduler
    scaler: Optional[torch.amp.GradScaler]
    criterion: nn.Module
    precision: Precision
    train_loader: TensorLoader
    val_loader: TensorLoader
    mixer: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]
    channels_last: bool
    grad_clip: Optional[float] = None
    accumulate_steps: int = 1  # micro-batches per optimizer step (train_step splits each loader batch)
    cpu_dropout: int = 0  # nn.Dropout modules given the cheaper CPU mask
    dist: Dist = Dist()
    eval_model: Optional[nn.Module] = None  # what evaluation calls (default ``model``); never DDP's wrapper
    ema: Optional[AveragedModel] = None  # train.ema_decay: the weight EMA of ``module`` (``make_ema``)
    ema_eval_model: Optional[nn.Module] = None  # what evaluates the EMA: its module, compiled when ``model`` is

    def __post_init__(self):
        if self.eval_model is None:
            self.eval_model = self.model

    def describe(self) -> str:
        extras = [str(self.precision)] + (["channels_last"] if self.channels_last else []) \
            + (["compiled"] if self.eval_model is not self.module else []) \
            + ([f"CPU dropout mask x{self.cpu_dropout}"] if self.cpu_dropout else []) \
            + ([f"DDP over {self.dist.world_size} processes"] if self.dist.enabled else [])
        return f"{self.device} ({', '.join(extras)})"


def make_ema(module: nn.Module, optimizer: torch.optim.Optimizer, decay: float) -> AveragedModel:
    """The weight EMA of ``module`` (parameters and buffers), updated after every optimizer step that is taken
    (an optimizer step hook: a step a GradScaler skips is not averaged). Of the plain module, never DDP's wrapper
    or the compiled one. Its step count ``n_averaged`` stays on the CPU: reading it costs no device sync."""
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    optimizer.register_step_post_hook(lambda *_: ema.update_parameters(module))
    return ema


def prepare(cfg: Config, model: nn.Module, data: ImageData, device: torch.device, dist: Dist = Dist(), *,
            fused_optimizer: Optional[bool] = None) -> Setup:
    """Model on the device (NHWC, cheaper CPU dropout, DDP, compiled if asked), loaders, optimizer, schedule, loss.

    ``fused_optimizer``: the optimizer's single fused kernel (``fused=True``) rather than its ``foreach`` one;
    default: where it pays (``FUSED_OPTIMIZER_ON``)."""
    t = cfg.train
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    if t.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise UserError("train.sync_bn: torch's SyncBatchNorm runs on GPUs only; set it false on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # NHWC measured 3-22% faster for every conv net on a 2-core CPU, neutral for ViTs (BENCHMARKS.md).
    model.to(device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    cpu_dropout = use_cpu_dropout(model) if device.type == "cpu" and t.cpu_dropout else 0
    train_loader, val_loader = make_loaders(cfg, data, device, channels_last=t.channels_last, dist=dist)
    lr = scaled_lr(t, dist.world_size)
    if lr > 100 or lr < t.min_lr:
        raise UserError(f"train.lr_scaling: {t.lr_scaling} makes train.lr {t.lr:g} into {lr:g} (global batch "
                        f"{global_batch(t, dist.world_size)}, train.lr_reference_batch {t.lr_reference_batch}), "
                        + ("above 100" if lr > 100 else f"below train.min_lr {t.min_lr:g}"))
    t = dataclasses.replace(t, lr=lr)  # the optimizer's and the schedule's peak
    fused = device.type in FUSED_OPTIMIZER_ON if fused_optimizer is None else fused_optimizer
    optimizer = build_optimizer(model, t, fused=fused)
    precision = Precision.for_device(device, t.precision)
    compiled = (lambda m: m) if t.compile == "off" else (lambda m: torch.compile(m, mode=t.compile))
    ema = make_ema(model, optimizer, t.ema_decay) if t.ema_decay else None
    train_model = model
    if dist.enabled:  # after the optimizer: DDP wraps the same parameters
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return Setup(
        model=compiled(train_model),
        # Evaluation never goes through DDP: its forward would sync buffers across processes whose
        # validation parts may have different numbers of batches.
        eval_model=None if not dist.enabled else compiled(model),
        module=model,
        dist=dist,
        device=device,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, t, len(train_loader)),
        scaler=torch.amp.GradScaler(device.type) if precision.needs_scaler else None,
        criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        precision=precision, train_loader=train_loader, val_loader=val_loader,
        mixer=mixup_cutmix(data.spec.num_classes, t.mixup_alpha, t.cutmix_alpha),
        channels_last=t.channels_last, grad_clip=t.grad_clip, cpu_dropout=cpu_dropout,
        accumulate_steps=t.accumulate_steps,
        ema=ema, ema_eval_model=compiled(ema.module) if ema is not None else None,
    )
