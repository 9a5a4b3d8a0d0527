"""The experiment config: nested dataclasses, each field with its type, default and valid range.

A field's range sits next to it (``num(...)`` metadata) and is checked by the loader right after the
field's type, so ``train.lr: 0`` reads ``train.lr: got 0.0; must be greater than 0``. Checks that span
fields (warmup within the run, the schedule's own keys) are each section's ``check()``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from core.errors import UserError

REQUIRED: Any = object()  # sentinel default for keys the user must set

# Bounds no real run reaches; past them a value is a typo (or an overflow), not an experiment.
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_SAMPLES = 1 << 40


def num(default: Any, *, ge: Optional[float] = None, gt: Optional[float] = None, le: Optional[float] = None,
        lt: Optional[float] = None, null_ok: bool = False) -> Any:
    """A numeric field whose value must lie in the given bounds (``None`` allowed when ``null_ok``)."""
    return field(default=default, metadata={"range": (ge, gt, le, lt, null_ok)})


def check_range(path: str, value: Any, spec: tuple) -> None:
    ge, gt, le, lt, null_ok = spec
    if (value is None and null_ok) or isinstance(value, str):  # null, or a named choice (train.threads: auto)
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{path}: got {value!r}; must be a finite number")
    ok = ((ge is None or value >= ge) and (gt is None or value > gt)
          and (le is None or value <= le) and (lt is None or value < lt))
    if not ok:
        raise UserError(f"{path}: got {value!r}; must be {_describe_range(ge, gt, le, lt)}"
                        f"{', or null' if null_ok else ''}")


def _describe_range(ge, gt, le, lt) -> str:
    f = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:g}"  # noqa: E731
    low = f"[{f(ge)}" if ge is not None else f"({f(gt)}" if gt is not None else None
    high = f"{f(le)}]" if le is not None else f"{f(lt)})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"at least {f(ge)}" if ge is not None else f"greater than {f(gt)}"
    return f"at most {f(le)}" if le is not None else f"less than {f(lt)}"


@dataclass
class ModelConfig:
    """``name`` picks the registered model; every other key is passed to its builder (checked there)."""

    name: str = REQUIRED
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}


@dataclass
class DataConfig:
    name: str = REQUIRED
    root: str = "./datasets"
    download: bool = True
    limit_train: Optional[int] = num(None, ge=1, le=MAX_SAMPLES, null_ok=True)  # first N training samples
    limit_val: Optional[int] = num(None, ge=1, le=MAX_SAMPLES, null_ok=True)
    augment: bool = True  # the dataset's standard batched augmentation (docs/datasets.md)
    auto_augment: Literal["none", "trivialaugment"] = "none"  # after the standard augmentation
    random_erasing: float = num(0.0, ge=0, le=1)  # probability per image of erasing one box (timm's reprob)
    cache: bool = True  # keep decoded uint8 tensors so the next run starts fast
    cache_dir: Optional[str] = None  # null = $XDG_CACHE_HOME/vitlab or ~/.cache/vitlab


@dataclass
class TrainConfig:
    epochs: int = num(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = num(128, ge=1, le=MAX_BATCH)
    eval_batch_size: int = num(512, ge=1, le=MAX_BATCH)
    lr: float = num(1.0e-3, gt=0, le=100)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = num(0.05, ge=0, le=100)  # not applied to biases and norm weights
    momentum: float = num(0.9, ge=0, lt=1)  # SGD only
    nesterov: bool = False  # SGD only
    # torch.optim.lr_scheduler, stepped every optimizer step: cosine = CosineAnnealingLR, onecycle = OneCycleLR,
    # multistep = MultiStepLR(milestones), step = StepLR(step_size, gamma), constant; warmup = LinearLR before.
    schedule: Literal["cosine", "onecycle", "multistep", "step", "constant"] = "cosine"
    warmup_epochs: float = num(0.0, ge=0)  # linear warmup; for onecycle, the ramp-up (default 30% of training)
    min_lr: float = num(0.0, ge=0)  # cosine floor
    milestones: list[int] = field(default_factory=list)  # multistep: epochs at which lr *= gamma
    step_size: int = num(1, ge=1, le=MAX_EPOCHS)  # step: every step_size epochs lr *= gamma
    gamma: float = num(0.1, gt=0, le=1)
    label_smoothing: float = num(0.0, ge=0, lt=1)
    mixup_alpha: float = num(0.0, ge=0, le=100)  # MixUp Beta(alpha, alpha); 0 = off
    cutmix_alpha: float = num(0.0, ge=0, le=100)  # CutMix Beta(alpha, alpha); 0 = off; both on: each batch picks one
    top5: bool = False  # also report top-5 validation accuracy
    grad_clip: Optional[float] = num(None, gt=0, null_ok=True)  # max global gradient norm; null = off
    # Early stopping: the run ends (status stopped_early) after this many epochs in a row without a new best
    # val_acc; 0 = off. It may change on --resume.
    early_stopping_patience: int = num(0, ge=0, le=MAX_EPOCHS)
    early_stopping_min_delta: float = num(0.0, ge=0, le=100)  # percentage points a new best must gain
    # Weight EMA (torch.optim.swa_utils.AveragedModel, buffers too), updated after every optimizer step and
    # evaluated each epoch (val_acc_ema); 0 = off, e.g. 0.9998.
    ema_decay: float = num(0.0, ge=0, lt=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # autocast dtype. auto: CUDA bf16 (fp16 + GradScaler where bf16 is unsupported), CPU bf16 where it has
    # AMX/AVX512-BF16 and fp32 elsewhere; fp32 = no autocast; bf16 / fp16 = that dtype on any device.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True  # NHWC activations (faster for conv nets on CPU and CUDA)
    cpu_dropout: bool = True  # on the CPU, nn.Dropout draws its mask the cheaper way (train/cpu_dropout.py)
    # torch.compile mode; false = eager, true = "default", "reduce-overhead" = CUDA graphs
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    log_every: int = num(50, ge=1)  # steps between progress-bar updates (each one is a host sync)
    sync_bn: bool = False  # several processes (torchrun): BatchNorm statistics over the global batch (GPUs)
    # Gradient accumulation: micro-batches of batch_size per optimizer step (global batch = batch_size x this x
    # processes); the loss of each is divided by it, so the step equals one on the whole global batch.
    accumulate_steps: int = num(1, ge=1, le=MAX_BATCH)
    # lr used = lr x (global batch / lr_reference_batch) (linear) or its square root (sqrt); none = lr as given
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_reference_batch: int = num(256, ge=1, le=MAX_BATCH)  # the batch that train.lr was tuned for
    # torch's CPU threads (torch.set_num_threads, before the model is built). auto = the cores this process may
    # run on (os.sched_getaffinity, at most torch's own count), divided among --jobs workers. The count changes
    # the order of a CPU's sums, so the numbers: the count used is recorded (results.json) and a resume keeps it.
    threads: int | Literal["auto"] = num("auto", ge=1, le=1024)

    def check(self) -> None:
        if self.warmup_epochs > self.epochs:
            raise UserError(f"train.warmup_epochs: got {self.warmup_epochs!r}; must be in [0, train.epochs={self.epochs}]")
        if self.min_lr > self.lr:
            raise UserError(f"train.min_lr: got {self.min_lr!r}; must be in [0, train.lr={self.lr}]")
        if self.schedule == "multistep":
            if not self.milestones:
                raise UserError("train.milestones: got []; must be a non-empty list of epochs when "
                                "train.schedule is multistep")
            bad = [m for m in self.milestones if not 1 <= m <= MAX_EPOCHS]
            if bad:
                raise UserError(f"train.milestones: got {bad[0]!r}; each must be an epoch >= 1")


@dataclass
class OutputConfig:
    dir: str = "./runs"  # each run gets a new directory below this one
    checkpoints: bool = True  # write last.pt (the whole training state, for --resume) and best.pt (weights)
    # also write last.pt mid-epoch, every N optimizer steps and/or every M minutes (null = epoch ends only)
    checkpoint_every_steps: Optional[int] = num(None, ge=1, le=MAX_SAMPLES, null_ok=True)
    checkpoint_every_minutes: Optional[float] = num(None, gt=0, le=MAX_EPOCHS * 24 * 60, null_ok=True)
    tensorboard: bool = True  # TensorBoard event files in RUN_DIR (train/tb.py): tensorboard --logdir runs/
    # The comparison after a multi-run call measures each experiment's inference latency on the CPU, with this
    # many torch threads (1: the steadiest on a shared machine; recorded beside every number).
    latency: bool = True
    latency_threads: int = num(1, ge=1, le=1024)


@dataclass
class SlurmConfig:
    """How ``--launcher slurm`` submits each point (submitit); none of it changes what a run computes."""

    partition: Optional[str] = None  # null = the cluster's default partition
    time_min: int = num(60, ge=1, le=MAX_EPOCHS * 24 * 60)  # each job's time limit; it requeues itself at the limit
    gpus_per_node: int = num(0, ge=0, le=1024)
    nodes: int = num(1, ge=1, le=1024)
    # processes per node; null = one per GPU (or 1). Above one process in all, the point trains with DDP.
    tasks_per_node: Optional[int] = num(None, ge=1, le=1024, null_ok=True)
    cpus_per_task: Optional[int] = num(None, ge=1, le=4096, null_ok=True)
    mem_gb: Optional[float] = num(None, gt=0, le=1 << 20, null_ok=True)
    sbatch: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, e.g. {account: x, qos: y}


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    name: Optional[str] = None  # run name; null = the model name
    seed: int = num(0, ge=0, lt=2 ** 63)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    @property
    def run_name(self) -> str:
        return self.name or self.model.name.replace("/", "_")  # timm/resnet18: one directory name

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    def check(self) -> None:
        if self.name is not None:
            check_run_name(self.name)
        self.train.check()


# The datasets of data/catalog.py (a test keeps the two lists equal): config/ imports no torch.
DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashion_mnist", "imagenette")


def run_name(name: str, dataset: str) -> str:
    """``<name>-<dataset>``: what a run is called, so a run always says what it trained on. A name that
    already ends with a dataset's name (after ``-`` or ``_``) has that ending replaced, so
    ``cnn_tr_small_cifar10`` on Fashion-MNIST is ``cnn_tr_small-fashion_mnist``, and applying this twice
    changes nothing."""
    for d in sorted({*DATASET_NAMES, dataset}, key=len, reverse=True):  # fashion_mnist before mnist
        ending = next((sep + d for sep in "-_" if name.endswith(sep + d) and len(name) > len(d) + 1), None)
        if ending:
            name = name[: -len(ending)]
            break
    return f"{name}-{dataset}"


def setting_warnings(cfg: "Config") -> list[str]:
    """Settings that are valid but cannot take effect in this config, one line each (the run goes on)."""
    t, out = cfg.train, cfg.output
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = lambda key: getattr(t, key) != default[key]  # noqa: E731
    found = []
    if t.schedule == "multistep":
        late = [m for m in t.milestones if m >= t.epochs]
        if late:
            found.append(f"train.milestones: {', '.join(map(str, late))} at or after the last epoch "
                         f"(train.epochs={t.epochs}); the lr never drops there")
    elif t.milestones:
        found.append(f"train.milestones: only used by schedule multistep; ignored with {t.schedule}")
    if t.schedule == "step" and t.step_size >= t.epochs:
        found.append(f"train.step_size: {t.step_size} epochs, not shorter than the run (train.epochs={t.epochs}); "
                     f"the lr never drops")
    if t.schedule != "step" and changed("step_size"):
        found.append(f"train.step_size: only used by schedule step; ignored with {t.schedule}")
    if t.schedule not in ("multistep", "step") and changed("gamma"):
        found.append(f"train.gamma: only used by schedules multistep and step; ignored with {t.schedule}")
    if t.schedule != "cosine" and changed("min_lr"):
        found.append(f"train.min_lr: the floor of schedule cosine; ignored with {t.schedule}")
    if t.optimizer != "sgd":
        for key in ("momentum", "nesterov"):
            if changed(key):
                found.append(f"train.{key}: SGD only; ignored with optimizer {t.optimizer}")
    if not out.checkpoints:
        for key in ("checkpoint_every_steps", "checkpoint_every_minutes"):
            if getattr(out, key) is not None:
                found.append(f"output.{key}: ignored with output.checkpoints: false")
    if t.lr_scaling == "none" and changed("lr_reference_batch"):
        found.append("train.lr_reference_batch: only used by train.lr_scaling linear or sqrt; ignored with none")
    if not t.early_stopping_patience and changed("early_stopping_min_delta"):
        found.append("train.early_stopping_min_delta: ignored with train.early_stopping_patience: 0 (off)")
    elif t.early_stopping_patience and t.early_stopping_patience >= t.epochs - 1:
        # The first epoch always improves, so the earliest stop is after epoch patience + 1.
        found.append(f"train.early_stopping_patience: {t.early_stopping_patience} epochs leave no epoch before the "
                     f"last (train.epochs={t.epochs}) to stop after; the run never stops early")
    if t.warmup_epochs and t.warmup_epochs >= t.epochs:
        found.append(f"train.warmup_epochs: {t.warmup_epochs:g}, the whole run (train.epochs={t.epochs}); "
                     f"schedule {t.schedule} never {'anneals' if t.schedule == 'onecycle' else 'starts'}")
    return found


MAX_NAME = 200  # bytes: a directory name (255 on most file systems) less the date suffix


def check_run_name(name: str) -> None:
    """A run name becomes one directory under ``output.dir``: a single, visible path component."""
    bad = next((c for c in name if c in '/\\\0' or not c.isprintable()), None)
    if not name.strip() or name.startswith(".") or bad is not None or len(name.encode()) > MAX_NAME:
        why = ("is empty" if not name.strip() else "starts with '.'" if name.startswith(".")
               else f"contains {bad!r}" if bad is not None else f"is longer than {MAX_NAME} bytes")
        raise UserError(f"name: {name!r} {why}; a run name is one directory name under output.dir "
                        f"(letters, digits, and e.g. - _ = + , .), with no path separators")


def config_keys() -> dict[str, tuple[str, ...]]:
    """Every dotted key a config file or ``--set`` may name (a model's own keys aside, which its builder
    decides), each with the values it is limited to (a choice, a bool; empty: any value of its type).
    For the shell's completion of ``--set KEY=VALUE``: imports nothing but this module."""
    import typing

    def walk(cls: type, prefix: str) -> dict[str, tuple[str, ...]]:
        out = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if dataclasses.is_dataclass(kind):
                out.update(walk(kind, f"{prefix}{f.name}."))
            elif cls is ModelConfig and f.name == "kwargs":
                continue
            else:
                choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else \
                    ("true", "false") if kind is bool else ()
                out[prefix + f.name] = tuple(map(str, choices))
        return out

    return walk(Config, "")
