"""BatchedForward: concurrent callers share one model call and each gets exactly its own rows back."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from model_pkg.batching import BatchedForward, batch_concurrent_calls

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class SlowDouble:
    """x -> 2x + row index within the call, recording each call's batch size; the first call waits until
    `release` is set, so the callers that arrive meanwhile queue up behind it."""

    def __init__(self):
        self.sizes: list[int] = []
        self.release = threading.Event()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sizes:
            assert self.release.wait(10)
        self.sizes.append(len(x))
        return x * 2


def run_concurrently(batched, inputs, before_release=None):
    with ThreadPoolExecutor(len(inputs)) as pool:
        futures = [pool.submit(batched, x) for x in inputs]
        if before_release is not None:
            before_release()
        return [f.result(timeout=30) for f in futures]


def wait_for_pending(batched: BatchedForward, n: int) -> None:
    for _ in range(1000):
        with batched._cond:
            if len(batched._pending) >= n:
                return
        threading.Event().wait(0.005)
    raise AssertionError(f"{n} callers never queued")


def test_concurrent_calls_share_a_batch_and_get_their_own_rows():
    fn = SlowDouble()
    batched = BatchedForward(fn, max_batch_size=32)
    inputs = [torch.full((i + 1, 3), float(i)) for i in range(6)]  # 1..6 rows, each caller's own values

    def release():
        wait_for_pending(batched, 5)  # the first caller runs alone, the other 5 wait behind it
        fn.release.set()

    outputs = run_concurrently(batched, inputs, release)
    for x, y in zip(inputs, outputs):
        assert torch.equal(y, x * 2)
    assert sorted(fn.sizes) == sorted([fn.sizes[0], 21 - fn.sizes[0]]) and len(fn.sizes) == 2
    assert batched.calls == 2 and batched.rows == 21


def test_max_batch_size_and_shapes_split_batches():
    fn = SlowDouble()
    batched = BatchedForward(fn, max_batch_size=4)
    inputs = [torch.ones(1, 3), torch.ones(3, 3), torch.ones(2, 3), torch.ones(2, 5), torch.ones(6, 3)]

    def release():
        wait_for_pending(batched, 4)
        fn.release.set()

    outputs = run_concurrently(batched, inputs, release)
    assert [y.shape for y in outputs] == [x.shape for x in inputs]
    assert max(fn.sizes[1:]) <= 6  # the 6-row input runs alone, whole; no other call goes past 4 rows
    assert all(size <= 4 for size in fn.sizes if size != 6)


def test_an_error_reaches_every_caller_of_its_batch_and_only_those():
    entered, release, sizes = threading.Event(), threading.Event(), []

    def fails_on_negative(x: torch.Tensor) -> torch.Tensor:
        if not sizes:
            entered.set()
            assert release.wait(10)
        sizes.append(len(x))
        if (x < 0).any():
            raise ValueError("negative input")
        return x + 1

    batched = BatchedForward(fails_on_negative)
    # the first call runs alone; then the bad one (another width: a batch of its own), then the two good ones together
    inputs = [torch.zeros(1, 2), torch.full((1, 3), -1.0), torch.zeros(1, 2), torch.ones(2, 2)]
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batched, inputs[0])
        assert entered.wait(10)
        queued = []
        for n, x in enumerate(inputs[1:], start=1):  # one at a time, so they line up in this order
            queued.append(pool.submit(batched, x))
            wait_for_pending(batched, n)
        release.set()
        assert torch.equal(first.result(30), torch.ones(1, 2))
        with pytest.raises(ValueError, match="negative input"):
            queued[0].result(30)
        assert torch.equal(queued[1].result(30), torch.ones(1, 2)) and torch.equal(queued[2].result(30), torch.full((2, 2), 2.0))
    assert sizes == [1, 1, 3]
    assert torch.equal(batched(torch.zeros(1, 2)), torch.ones(1, 2))  # the batcher is usable afterwards
    with pytest.raises(TypeError, match="takes 1 positional"):
        BatchedForward(lambda x: x)(None, None)  # not one tensor: passed through to fn unchanged


def test_wrapping_a_model_method_keeps_its_results():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    model.embed = lambda pixel_values: model(pixel_values)  # a method taking pixel_values=, as get_image_features
    x = torch.randn(5, 4)
    expected = model(x)
    wrapper = batch_concurrent_calls(model, "embed", max_batch_size=8)
    assert model.embed is wrapper and batch_concurrent_calls(model, "embed") is wrapper  # wrapped once
    assert torch.allclose(model.embed(pixel_values=x), expected, atol=1e-6)
    outputs = run_concurrently(model.embed, [x[i : i + 1] for i in range(5)])
    assert torch.allclose(torch.cat(outputs), expected, atol=1e-6)
    assert not model.embed(x).requires_grad  # inference: no autograd graph is kept
    with pytest.raises(ValueError, match="at least 1"):
        BatchedForward(model, max_batch_size=0)
