"""One run on several processes: ``torch.distributed`` with DistributedDataParallel, as started by torchrun.

    torchrun --nproc_per_node=2 main.py --cfg configs/cnn_tr_medium.yaml

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in every process; ``from_env``
reads them, ``start`` joins the process group (NCCL for CUDA tensors, gloo for CPU tensors, so the same
code runs on a GPU box and in CI on a CPU). Without them (or with WORLD_SIZE=1) ``Dist()`` is the single
process and every method here is a no-op that costs nothing.

What a run does with several processes (docs/scaling.md):
  * ``train.batch_size`` is per process (as in timm): the global batch is batch_size x world size;
  * every process draws the same per-epoch order of the whole training set and keeps on its device only
    its slice of each global batch (``data.loader.TensorLoader(shard=...)``), so the global batches are the
    ones a single process with the global batch size would see; augmentation is drawn per process;
  * gradients are averaged by DDP; train and validation sums are all-reduced, so the logged numbers are
    over the whole data;
  * only rank 0 writes the run directory and prints; a checkpoint gathers every rank's random state;
  * a stop signal reaching any process stops all of them at the same step (agreed every ``log_every``
    steps and at each epoch's end).
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.distributed as tdist

from core.errors import RunFailed, UserError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Dist:
    """Where this process stands among the processes training one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"

    # ------------------------------------------------------------------ collectives (no-ops alone)

    def sum(self, values: Sequence[torch.Tensor | float], device: torch.device) -> list[float]:
        """``values`` summed over all processes, as Python floats (float64: counts stay exact below 2**53).
        Alone: the values themselves (one host sync)."""
        packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).reshape(()) for v in values])
        if self.enabled:
            self._collective("summing metrics", tdist.all_reduce, packed)
        return packed.tolist()

    def any(self, flags: Sequence[bool], device: torch.device) -> list[bool]:
        """For each flag: whether it is set in any process (a stop signal, a checkpoint that is due)."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
        self._collective("agreeing on a stop or checkpoint", tdist.all_reduce, t, op=tdist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def gather(self, obj: Any) -> Optional[list[Any]]:
        """Every process's ``obj`` on rank 0 (in rank order), None elsewhere; alone: ``[obj]``."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        self._collective("gathering checkpoint state", tdist.gather_object, obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` in every process."""
        if not self.enabled:
            return obj
        box = [obj]
        self._collective("sharing the run directory", tdist.broadcast_object_list, box, src=0)
        return box[0]

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in every process: after the last step each one
        holds those of its own last batch, and the model evaluated should be the one rank 0 saves."""
        if self.enabled:
            for buffer in module.buffers():
                self._collective("sharing BatchNorm statistics", tdist.broadcast, buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            self.sum([0.0], torch.device("cpu"))

    def _collective(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except (RuntimeError, tdist.DistError) as e:  # a peer died: gloo sees its socket close
            raise self.peer_lost(e, what) from None

    def peer_lost(self, e: BaseException, what: str = "training") -> "PeerLost":
        return PeerLost(f"{self}: lost contact with the other processes while {what} ({_brief(e)}); another "
                        f"process of this run stopped: its own error is in torchrun's output")

    def is_peer_loss(self, e: BaseException) -> bool:
        """Whether ``e`` (raised by a collective, e.g. DDP's gradient all-reduce in ``backward``) says that
        another process went away."""
        if not self.enabled or isinstance(e, PeerLost):
            return False
        text = str(e)
        return isinstance(e, tdist.DistError) or isinstance(e, RuntimeError) and any(
            mark in text for mark in ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer"))


class PeerLost(RunFailed):
    """Another process of the run stopped (killed, out of memory, its own error) while this one waited on it."""


def _brief(e: BaseException) -> str:
    """gloo's '[.../pair.cc:545] Read error [127.0.0.1]:384: Connection reset by peer. This is typically
    ...' as 'Read error [127.0.0.1]:384: Connection reset by peer'."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    first = re.sub(r"^\[[^\]]*\]\s*", "", first)
    return first.split(". ")[0].rstrip(".")


def from_env(environ=os.environ) -> Dist:
    """The process's place from torchrun's variables; ``Dist()`` when they are absent."""
    if "WORLD_SIZE" not in environ:
        return Dist()
    values = {}
    for key in ENV_KEYS:
        text = environ.get(key, "0")
        try:
            values[key] = int(text)
        except ValueError:
            raise UserError(f"environment: {key}={text!r} is not an integer; start several processes with "
                            f"torchrun (docs/scaling.md)") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not fit "
                        f"together; start several processes with torchrun (docs/scaling.md)")
    return Dist(rank, world, local)


def launcher(d: Dist, environ=os.environ) -> str:
    """How this process was started, as the front of a command line: for a resume command and provenance."""
    if not d.enabled:
        return "python main.py"
    per_node = int(environ.get("LOCAL_WORLD_SIZE", d.world_size))
    nodes = d.world_size // max(1, per_node)
    return f"torchrun --nproc_per_node={per_node}" + (f" --nnodes={nodes} (and your rendezvous flags)" if nodes > 1
                                                      else "") + " main.py"


def start(d: Dist, timeout_min: float = 30.0) -> None:
    """Join the process group (torchrun's rendezvous): gloo for CPU tensors, NCCL for CUDA ones."""
    if not d.enabled or tdist.is_initialized():
        return
    if not tdist.is_available():
        raise UserError("torchrun: this torch build has no torch.distributed")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"environment: WORLD_SIZE={d.world_size} but {', '.join(missing)} not set; start several "
                        f"processes with torchrun (docs/scaling.md)")
    try:
        tdist.init_process_group(backend, rank=d.rank, world_size=d.world_size,
                                 timeout=datetime.timedelta(minutes=timeout_min))
    except (RuntimeError, ValueError, tdist.DistError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"torchrun: {d} could not join the others at {os.environ.get('MASTER_ADDR')}:"
                        f"{os.environ.get('MASTER_PORT')} ({first})") from None


def stop() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
