"""Training on several processes (`accelerate launch --num_processes N`, torchrun).

Every process runs the whole training function. `process_state` says which one this is before the
Trainer exists, `main_process_first` lets the main process of each machine build the feature caches
that the others then read (`log_cache` says which one builds and which one reads), and
`GlobalBatchNorm1d` normalises over the global batch so N processes train like one process with N
times the batch. Separate from the rest of the package because none of it is about one family's recipe:
it is the contract between the families and the launcher.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["GlobalBatchNorm1d", "log_cache", "main_process_first", "process_state"]


def process_state():
    """This process's `accelerate.PartialState`: process index and count of a run started by
    `accelerate launch` or torchrun (one process otherwise).

    The same state `TrainingArguments` sets up (it passes `use_cpu`, and honours `accelerate launch
    --cpu`): gloo on CPUs, nccl on GPUs. Asking for it before the Trainer exists joins the process group
    early, so the caches can be built by one process and the step counts can use the process count."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    from transformers import TrainingArguments

    cpu = not torch.cuda.is_available() or parse_flag_from_env("ACCELERATE_USE_CPU")
    # the Trainer's timeout for a collective (30 min), not torch's shorter NCCL default: a process waits at a
    # barrier while the main one builds a cache
    timeout = datetime.timedelta(seconds=TrainingArguments.__dataclass_fields__["ddp_timeout"].default)
    return PartialState(cpu=cpu, timeout=timeout)


@contextlib.contextmanager
def main_process_first(what: str) -> Iterator[None]:
    """Run the block on the main process of each machine first, then on the others.

    For the feature caches: the main process computes them and writes them to disk, the others find
    the files and read them, so a cache is built once per machine, not once per process (N processes
    racing to write the same file would also each pay the full cost). Per machine, not once overall:
    machines need not share a filesystem. With one process it is a plain block."""
    state = process_state()
    if state.num_processes > 1:
        logger.info(
            "process %d/%d: %s%s",
            state.process_index,
            state.num_processes,
            what,
            "" if state.is_local_main_process else " (waiting for the main process to build it)",
        )
    with state.local_main_process_first():
        yield


def log_cache(what: str, path: str | os.PathLike | None) -> None:
    """Log whether this process builds the cache file `path` or reads it (one line per process)."""
    if path is None:
        return
    state = process_state()
    action = "reading" if os.path.exists(path) else "building"
    logger.info("process %d/%d: %s %s cache %s", state.process_index, state.num_processes, action, what, path)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch, over every process.

    With N processes each one sees 1/N of the batch; a plain BatchNorm would normalise each share with
    its own mean and variance, so the model would train differently from one process with the whole
    batch. Here the per-feature sums are added up over the processes (an autograd-aware all-reduce, so
    the gradient flows through the shared statistics too) and the running statistics move with the global
    ones. `torch.nn.SyncBatchNorm` does the same on GPUs only; this also runs on CPUs (gloo). With one
    process, or in eval mode, it is exactly `nn.BatchNorm1d`; its parameters and buffers are the same, so
    checkpoints do not change."""

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm1d) -> GlobalBatchNorm1d:
        """The same module, synchronised: it takes over `bn`'s parameter and buffer objects themselves, so an
        optimizer built on `bn`'s parameters keeps training them."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name, param in bn.named_parameters(recurse=False):
            setattr(new, name, param)
        for name, buffer in bn.named_buffers(recurse=False):
            setattr(new, name, buffer)
        return new.train(bn.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]  # every dimension but the features': (B, C) or (B, C, L)
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)  # samples in the global batch
        mean = all_reduce(x.sum(dims)) / count  # (C,)
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count  # (C,) biased, as BatchNorm normalises with
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), factor)  # unbiased, as torch keeps it
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
