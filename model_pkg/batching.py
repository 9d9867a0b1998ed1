"""Batch the model calls of concurrent requests: one backbone pass for the photos of several callers.

A server answering requests in threads (Gradio with a `concurrency_limit` above 1, FastAPI's thread pool)
would otherwise run one small backbone pass per request, several at once, each asking torch for every core.
On a CPU a batch of 6 photos costs far less than 6 batches of one, and two passes fighting over two cores
are slower than one after the other. :class:`BatchedForward` wraps a function of a batch (e.g. a model's
``embed_photos``): concurrent callers' inputs are concatenated along the first dimension, run in one call,
and each caller gets its own rows back.

Batches form by themselves, without a timer: a call made while no batch runs starts at once (no added
latency for a lone request); calls made while a batch runs wait and go together in the next one. Every
input is checked and decoded by its caller before it gets here, so a bad upload fails only its own
request; an error inside the batched call is raised in every caller of that batch.

    model.embed_photos = BatchedForward(model.embed_photos)   # an instance attribute shadows the method
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import torch

__all__ = ["BatchedForward", "batch_concurrent_calls"]


class _Request:
    __slots__ = ("inputs", "output", "error", "done")

    def __init__(self, inputs: torch.Tensor):
        self.inputs = inputs
        self.output: torch.Tensor | None = None
        self.error: BaseException | None = None
        self.done = False


class BatchedForward:
    """Call ``fn`` (a tensor ``(B, ...)`` -> a tensor ``(B, ...)``, rows independent, as a model in eval mode)
    on the concatenated inputs of concurrent callers.

    Args:
        fn: the batch function; it runs under ``torch.no_grad()`` (inference only).
        max_batch_size: rows per call at most; a single larger input still runs alone, whole.

    Inputs of different shapes (past the first dimension) or dtypes never share a call. ``calls`` and
    ``rows`` count the calls made and the rows they processed (``rows / calls`` is the mean batch size).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], max_batch_size: int = 32):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.calls = 0
        self.rows = 0
        self._pending: deque[_Request] = deque()
        self._running = False
        self._cond = threading.Condition()

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        """``fn(x)`` for one batch tensor ``x`` (positional, or as ``pixel_values=``), batched with concurrent
        calls; any other call (other arguments, no tensor) goes straight to ``fn``."""
        inputs = (
            args[0] if len(args) == 1 and not kwargs else kwargs.get("pixel_values") if len(kwargs) == 1 and not args else None
        )
        if not isinstance(inputs, torch.Tensor) or inputs.ndim == 0:
            return self.fn(*args, **kwargs)
        request = _Request(inputs)
        with self._cond:
            self._pending.append(request)
            # wait until another caller has run this request, or until nobody runs batches: then run them
            while not request.done and self._running:
                self._cond.wait()
            if not request.done:
                self._running = True
        if not request.done:
            try:
                while not request.done:  # the batches ahead of this caller's request, then its own
                    self._run_next_batch()
            finally:
                with self._cond:
                    self._running = False  # the next waiting caller takes over (its request may be pending)
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        assert request.output is not None
        return request.output

    def _take_batch(self) -> list[_Request]:
        with self._cond:
            first = self._pending.popleft()
            batch, rows = [first], len(first.inputs)
            kept: deque[_Request] = deque()
            while self._pending:
                r = self._pending.popleft()
                fits = (
                    r.inputs.shape[1:] == first.inputs.shape[1:]
                    and r.inputs.dtype == first.inputs.dtype
                    and rows + len(r.inputs) <= self.max_batch_size
                )
                if fits:
                    batch.append(r)
                    rows += len(r.inputs)
                else:
                    kept.append(r)
            self._pending.extendleft(reversed(kept))  # the others keep their place in line
            return batch

    def _run_next_batch(self) -> None:
        batch = self._take_batch()
        try:
            with torch.no_grad():
                inputs = batch[0].inputs if len(batch) == 1 else torch.cat([r.inputs for r in batch])
                output = self.fn(inputs)
            if not isinstance(output, torch.Tensor) or len(output) != len(inputs):
                raise RuntimeError(
                    f"the batched function returned {type(output).__name__} of length "
                    f"{len(output) if hasattr(output, '__len__') else '?'} for {len(inputs)} input rows"
                )
            parts = torch.split(output, [len(r.inputs) for r in batch])
            for r, part in zip(batch, parts):
                r.output = part
        except BaseException as err:  # every caller of this batch gets the error
            for r in batch:
                r.error = err
        with self._cond:
            self.calls += 1
            self.rows += sum(len(r.inputs) for r in batch)
            for r in batch:
                r.done = True
            self._cond.notify_all()


def batch_concurrent_calls(model: object, method: str, max_batch_size: int = 32) -> BatchedForward:
    """Make ``model.<method>(pixel_values)`` batch concurrent calls (see :class:`BatchedForward`); -> the wrapper.

    The wrapper is set as an instance attribute, so code that calls ``model.<method>`` (``match_sets``,
    ``PhotoGallery``) batches without knowing it; ``del model.<method>`` restores the plain method."""
    current = getattr(model, method)
    if isinstance(current, BatchedForward):
        return current
    wrapper = BatchedForward(current, max_batch_size)
    object.__setattr__(model, method, wrapper)
    return wrapper
