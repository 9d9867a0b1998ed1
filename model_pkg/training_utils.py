"""Pieces every training entry shares (pair matcher, ArcFace embedder, dual encoder).

Several processes (`accelerate launch --num_processes N`, torchrun): every process runs the whole
training function. `process_state` says which one this is before the Trainer exists,
`main_process_first` lets the main process of each machine build the feature caches that the
others then read, and `GlobalBatchNorm1d` normalises over the global batch so N processes train
like one process with N times the batch.

Also shared by the families: checkpoint discovery for auto-resume (`last_checkpoint`), the mixed-precision
choice, atomic saving, and the two-phase pieces (`PhaseCollator`: cached features while the backbone is frozen,
pixels once it trains; `PhaseAwareEarlyStopping`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import EarlyStoppingCallback

logger = logging.getLogger(__name__)

__all__ = [
    "MIXED_PRECISION",
    "Collator",
    "PhaseAwareEarlyStopping",
    "PhaseCollator",
    "GlobalBatchNorm1d",
    "check_options",
    "last_checkpoint",
    "log_cache",
    "main_process_first",
    "process_state",
    "resolve_mixed_precision",
    "save_atomically",
]

MIXED_PRECISION = ("auto", "bf16", "fp16", "no")


def check_options(config_cls: type, values: Mapping[str, Any], what: str) -> None:
    """Refuse recipe keys that `config_cls` (a dataclass) has no field for, naming the known ones.

    A misspelt option in a YAML recipe or a `--set key=value` would otherwise be a TypeError from the
    dataclass constructor, or worse, silently ignored.
    """
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {what} option(s) {unknown}; known options: {sorted(known)}.")


def save_atomically(directory: str | os.PathLike, write) -> None:
    """`write(tmp_dir)` into a temporary sibling, then swap it in: `directory` is always whole or absent."""
    target = Path(directory).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(str(tmp))
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- several processes ----------------------------------------------------------------------------
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


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint (Trainer writes trainer_state.json last), for auto-resume."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and os.path.isfile(os.path.join(path, "trainer_state.json")):
            found.append((int(name.split("-")[-1]), path))
    return max(found)[1] if found else None


def resolve_mixed_precision(option: str = "auto") -> str:
    """ "bf16" on Ampere or newer GPUs, "fp16" on older GPUs, "no" on CPU (`option` forces one on a GPU)."""
    if option not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={option!r} is not one of {MIXED_PRECISION}.")
    if not torch.cuda.is_available():
        if option in ("bf16", "fp16"):
            logger.warning("mixed_precision=%s asked for, but there is no GPU: training in float32", option)
        return "no"
    if option == "auto":
        return "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"
    return option


Collator = Callable[[Sequence[dict]], dict]  # rows -> a batch of tensors


class PhaseCollator:
    """Cached tokens while the backbone is frozen, pixels once it trains (augmented for train rows).

    Training batches (rows with `augment`) take their phase from their own index when `frozen_steps` is given:
    the first `frozen_steps` are cached tokens, the rest pixels. The data loader collates one batch ahead of the
    step that uses it, so a flag flipped at the phase switch would reach the training batches one batch late, and
    not at all for the first batch after a resume; counting batches (`train_batches`, set to the global step when
    training starts or resumes) gives an interrupted run the same batches as an uninterrupted one. For the same
    reason their random augmentation is drawn from a generator seeded by `seed` and the batch index, not from the
    global RNG: the look-ahead batch would otherwise draw before the checkpoint stores the RNG state, and a resumed
    run would see other crops. Evaluation batches follow `use_tokens`. Of several training processes, each one
    (`process_index`) draws augmentations of its own; process 0 draws exactly what a single process would."""

    def __init__(
        self,
        cached: Collator,
        train_pixels: Collator,
        eval_pixels: Collator,
        frozen_steps: int | None = None,
        seed: int = 0,
        process_index: int = 0,
    ):
        self.cached = cached
        self.train_pixels = train_pixels
        self.eval_pixels = eval_pixels
        self.use_tokens = True
        self.frozen_steps = frozen_steps
        self.seed = seed
        self.process_index = process_index
        self.train_batches = 0

    def __call__(self, features):
        augment = all(f.get("augment", False) for f in features)
        if augment and self.frozen_steps is not None:
            index = self.train_batches
            self.train_batches += 1
            if index < self.frozen_steps:
                return self.cached(features)
            with torch.random.fork_rng(devices=[]):  # the global RNG (dropout, ...) is left as it was
                torch.manual_seed(self.seed * 1_000_003 + index + (self.process_index << 32))
                return self.train_pixels(features)
        if self.use_tokens:
            return self.cached(features)
        return (self.train_pixels if augment else self.eval_pixels)(features)


class PhaseAwareEarlyStopping(EarlyStoppingCallback):
    """Early stopping on the validation metric that never ends the frozen phase before fine-tuning has run."""

    def __init__(self, patience: int, frozen_steps: int, finetune_steps: int):
        super().__init__(early_stopping_patience=patience)
        self.frozen_steps = frozen_steps
        self.finetune_steps = finetune_steps

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if self.finetune_steps and state.global_step <= self.frozen_steps:
            control.should_training_stop = False
            if state.global_step == self.frozen_steps:
                self.early_stopping_patience_counter = 0  # fine-tuning gets its full patience
