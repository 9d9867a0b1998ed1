"""Training on several processes trains like one process with the same global batch.

`accelerate launch --config_file train/accelerate/multi_gpu.yaml --num_processes 2 train/run.py ...`, the
line users run, starts two processes here on CPUs (gloo; `CUDA_VISIBLE_DEVICES` is emptied so a GPU
machine runs the same test). Each recipe runs once that way with a per-process batch of half the size,
and once as a single process in this test's process with the whole batch; the logged losses must agree
step by step.

The tolerance, 1e-3 relative per logged loss: with 2 processes the gradient is the all-reduced mean of
two half-batch means, and the ArcFace embedding BatchNorm adds up its sums over the processes, so float32
sums run in another order than over the whole batch. That rounding (~1e-7) grows with every update of
these deliberately high learning rates; over the 6 steps it stayed below 3e-5 (3e-7 and 9e-8 here). The
faults this guards against, each undone once to measure it, moved a logged loss by 35 % to 90 %: an
embedding BatchNorm normalising each half-batch on its own, its parameters left out of the optimizer,
parameters DDP never averages because they were frozen when it wrapped the model (the ArcFace run starts
from a frozen backbone, `freeze_backbone: true`, that the callbacks unfreeze after the wrap), and pair rows
for one process's batches only. Both processes drawing the same batch would halve the batch the loss is
the mean of; `test_pk_batches_shard_...` checks the batches themselves.

The recipes are tiny (a 32 px test backbone, 12 dogs) but take the paths the CPU recipes take: ArcFace on
cached stem activations (`activation_stage`, frozen backbone BatchNorm, P x K batches over 3 epochs) and
the pair matcher's frozen phase on cached tokens. Dropout is 0, so no random draw separates the runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 300  # a hung process group must fail the test, not the CI job

ARCFACE_MODEL = {
    "backbone": "test_efficientnet",
    "backbone_pretrained": False,
    "image_size": 32,
    "embedding_size": 16,
    "dropout": 0.0,
    "activation_stage": 2,
    "freeze_backbone": True,
    "freeze_backbone_bn": True,
}
PAIR_MODEL = {"backbone": "test_efficientnet", "backbone_pretrained": False, "image_size": 32, "hidden_size": 32, "dropout": 0.0}
STEPS = 6
LOSS_RTOL = 1e-3
# The ArcFace projection's bias feeds a BatchNorm in training mode, which subtracts it again: its gradient is
# zero up to rounding, and AdamW scales that rounding noise to full-size steps, so the bias (and the running
# mean that follows it) wander differently in every run. What they do, their difference, the loss shows.
BIAS_BEFORE_BATCHNORM = {"proj.bias", "bn.running_mean"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dog_tree(dog_faces, tmp_path_factory):
    """12 DogFaceNet dogs: 8 train (ArcFace classes), 2 val, 2 test."""
    root = tmp_path_factory.mktemp("dogs")
    source = dog_faces
    for dog in sorted(os.listdir(source), key=int)[:12]:
        shutil.copytree(source / dog, root / dog)
    return root


def arcface_args(dog_tree: Path, out: Path, p: int) -> list[str]:
    """The CPU recipe, tiny: 8 training dogs are 2 P x K batches of p=4 (or 4 of p=2) per epoch."""
    return [
        "--task",
        "arcface",
        "--config",
        str(ROOT / "train" / "configs" / "arcface_embedder_cpu.yaml"),
        *_sets(
            data_dir=dog_tree,
            output_dir=out,
            splits_file="null",
            model=json.dumps(ARCFACE_MODEL),
            p=p,
            k=2,
            frozen_steps=0,
            finetune_steps=STEPS,
            eval_steps=STEPS,
            logging_steps=1,
            activation_views=1,  # view 0 only: no random view choice
            activation_image_size="null",
            margin_ramp_steps=0,
            eval_on_start="false",
            learning_rate=0.01,  # high, so a gradient that is not averaged shows at once
            backbone_learning_rate=0.01,
        ),
    ]


def pair_args(dog_tree: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "--task",
        "pair",
        "--config",
        str(ROOT / "train" / "configs" / "pair_matcher.yaml"),
        *_sets(
            data_dir=dog_tree,
            output_dir=out,
            splits_file="null",
            model=json.dumps(PAIR_MODEL),
            frozen_steps=STEPS,
            finetune_steps=0,
            eval_steps=STEPS,
            val_pairs=12,
            batch_size=batch_size,
            logging_steps=1,
            learning_rate=0.01,
            calibration_set_sizes="[1]",
        ),
    ]


def _sets(**options) -> list[str]:
    return [arg for key, value in options.items() for arg in ("--set", f"{key}={value}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(args: list[str]) -> str:
    """`accelerate launch` with the shipped multi-GPU config and 2 processes; returns the output (stdout + stderr).

    On a timeout the launcher and every process under it are killed: a worker stuck in a collective must not
    outlive the test (torchrun starts each worker in a session of its own). The rendezvous port is a free one;
    should another program take it in between, the launch is tried once more on another."""
    returncode, output = _launch(args)
    if returncode and "address already in use" in output.lower():
        returncode, output = _launch(args)
    assert returncode == 0, f"2-process training failed (exit {returncode}); its output ends:\n{output[-6000:]}"
    return output


def _launch(args: list[str]) -> tuple[int, str]:
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        str(ROOT / "train" / "accelerate" / "multi_gpu.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        str(ROOT / "train" / "run.py"),
        *args,
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc.pid)
        output, _ = proc.communicate()
        pytest.fail(f"2-process training did not finish within {LAUNCH_TIMEOUT_S} s; its output ends:\n{output[-4000:]}")
    return proc.returncode, output


def kill_process_tree(pid: int) -> None:
    """Kill `pid` and all its descendants, children first (taken while the parent still lives)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        tree = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def run_one_process(args: list[str]) -> None:
    from train.run import main

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the 2 processes runs
    try:
        main(args)
    finally:
        torch.set_num_threads(previous)


def logged_losses(out: Path) -> tuple[list[int], np.ndarray, list[float]]:
    """Steps, training losses and epochs of the run's last checkpoint's log."""
    checkpoint = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    entries = [e for e in history if "loss" in e]
    return [e["step"] for e in entries], np.array([e["loss"] for e in entries]), [e["epoch"] for e in entries]


def assert_same_training(single: Path, double: Path) -> None:
    steps_1, loss_1, epochs_1 = logged_losses(single)
    steps_2, loss_2, epochs_2 = logged_losses(double)
    assert steps_1 == steps_2 == list(range(1, STEPS + 1))
    assert epochs_2 == pytest.approx(epochs_1)  # an epoch of the data is as many steps either way
    np.testing.assert_allclose(loss_2, loss_1, rtol=LOSS_RTOL, err_msg="2-process loss curve differs from 1 process")
    # only the main process writes the model; it holds the same weights as the single-process one
    weights_1 = load_file(single / "model" / "model.safetensors")
    weights_2 = load_file(double / "model" / "model.safetensors")
    assert weights_1.keys() == weights_2.keys()
    for name in sorted(set(weights_1) - BIAS_BEFORE_BATCHNORM):
        torch.testing.assert_close(weights_2[name], weights_1[name], rtol=1e-3, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert (double / "summary.json").is_file()


def cache_lines(output: str) -> dict[tuple[str, str], set[str]]:
    """(process, action) -> the cache files the `log_cache` lines of the 2-process output name."""
    found: dict[tuple[str, str], set[str]] = {}
    for process, action, path in re.findall(r"process (\d)/2: (building|reading) [\w -]+ cache (\S+)", output):
        found.setdefault((process, action), set()).add(path)
    return found


def assert_caches_built_once(output: str, expected: int) -> None:
    lines = cache_lines(output)
    built = lines.get(("0", "building"), set())
    assert len(built) == expected, f"the main process should build {expected} caches, it built {sorted(built)}"
    assert lines.get(("1", "reading"), set()) == built  # the other process reads each of them ...
    assert ("1", "building") not in lines  # ... and builds none
    for path in built:
        assert Path(path).exists()


def test_arcface_two_processes_train_like_one(dog_tree, tmp_path):
    output = launch_two_processes(arcface_args(dog_tree, tmp_path / "two", p=2))
    run_one_process(arcface_args(dog_tree, tmp_path / "one", p=4))
    assert_same_training(tmp_path / "one", tmp_path / "two")
    assert_caches_built_once(output, expected=3)  # pooled features, training views, validation photos
    # the other process returned without writing: one summary, one model folder
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["finetune_steps"] == STEPS


def test_pair_matcher_two_processes_train_like_one(dog_tree, tmp_path):
    output = launch_two_processes(pair_args(dog_tree, tmp_path / "two", batch_size=2))
    run_one_process(pair_args(dog_tree, tmp_path / "one", batch_size=4))
    assert_same_training(tmp_path / "one", tmp_path / "two")
    assert_caches_built_once(output, expected=1)  # the frozen backbone's tokens


def test_pk_batches_shard_across_processes_like_one_sampler_with_p_times_n():
    """What `accelerate` makes of `ArcFaceTrainer`'s P x K batch sampler for 2 processes, epoch by epoch as
    the Trainer drives it (`set_epoch` on the sampler inside `BatchSamplerShard`): each process gets whole
    P x K batches of its own, no photo index twice in a step, and together they are the batch a single
    process with 2P identities draws."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from model_pkg.data.samplers import PKBatchSampler

    labels = [i // 3 for i in range(30)]  # 10 identities x 3 photos

    def loader(p: int, processes: int, index: int):
        data = DataLoader(list(range(30)), batch_sampler=PKBatchSampler(labels, p, 2, seed=3), collate_fn=list)
        return prepare_data_loader(data, num_processes=processes, process_index=index, put_on_device=False)

    def set_epoch_as_the_trainer_does(dl, epoch: int) -> None:  # transformers' Trainer, each epoch
        dl.set_epoch(epoch)
        inner = getattr(getattr(dl, "batch_sampler", None), "batch_sampler", None)
        if hasattr(inner, "set_epoch"):
            inner.set_epoch(epoch)

    single = loader(4, 1, 0)
    shards = [loader(2, 2, i) for i in range(2)]
    assert [len(s) for s in shards] == [len(single), len(single)] == [2, 2]  # of 10 identities, 8 a step
    epochs = []
    for epoch in range(3):
        for dl in (single, *shards):
            set_epoch_as_the_trainer_does(dl, epoch)
        steps = list(zip(single, *shards, strict=True))
        for whole, first, second in steps:
            assert len(first) == len(second) == 4
            assert {labels[i] for i in first}.isdisjoint({labels[i] for i in second})  # other identities, other photos
            assert first + second == whole
        epochs.append(steps)
    assert epochs[0] != epochs[1] != epochs[2]  # every epoch draws new batches on every process


@pytest.mark.parametrize(
    "name, kind, machines",
    [("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 1), ("multi_node", "MULTI_GPU", 2), ("fsdp", "FSDP", 1)],
)
def test_shipped_accelerate_configs_load(name, kind, machines):
    """accelerate refuses a config with an unknown or misspelt key; each file is the setup it is named after."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "train" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_machines == machines
    assert config.mixed_precision == "no"  # the recipe's `mixed_precision` decides, not the launcher
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
