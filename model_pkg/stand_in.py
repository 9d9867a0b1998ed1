"""Stand-ins: another implementation of a module's inference call, attached to the module from outside.

ONNX Runtime is one (`model_pkg.onnx_runtime.OnnxTower`, attached by `from_pretrained` when the model folder holds
an export). A module that may be stood in for (`Backbone`, the dual encoder's transformers text tower) asks
`stand_in_for(self)` at each call and lets the stand-in compute the call when it `serves` the inputs: the module
knows this protocol only, never the runtime behind it (composition, not a base class).

A stand-in is held as a child module without parameters (no state-dict keys), so it follows its module's mode and
weight loads through torch's own recursion. It serves only at inference (eval mode, gradients off) and retires for
good when its module goes into training mode or loads weights: from then on the weights may differ from those it
computes with.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["StandIn", "stand_in_for"]

logger = logging.getLogger(__name__)


class StandIn(nn.Module):
    """Computes its parent module's inference call another way; subclasses give `serves` and `run`."""

    retired = False

    def serves(self, *inputs: torch.Tensor, **settings: Any) -> bool:
        """Whether `run(*inputs)` computes the module's call on these inputs with these settings."""
        raise NotImplementedError

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def retire(self) -> None:
        """Serve no more (subclasses also free what they hold)."""
        self.retired = True

    def train(self, mode: bool = True):
        if mode and not self.retired:
            logger.info("training mode: the %s stand-in retires, its module runs on PyTorch", type(self).__name__)
            self.retire()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.retire()  # new weights: the stand-in no longer computes its module
        return super()._load_from_state_dict(*args, **kwargs)


def stand_in_for(module: nn.Module) -> StandIn | None:
    """The stand-in that may compute `module`'s call now: one is attached and not retired, in eval mode, with
    gradients off."""
    if module.training or torch.is_grad_enabled():
        return None
    for child in module.children():
        if isinstance(child, StandIn) and not child.retired:
            return child
    return None
