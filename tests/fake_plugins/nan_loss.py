"""Fault injection: ``nan_after``, a CLIP-style loss that returns NaN from the 4th call on, and
``killed_once``, whose rank-1 worker is killed at its 5th call on the first torchrun attempt."""

import torch
import torch.nn.functional as F
from torch import nn

from core import LossSpec, hookimpl

class NanAfter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, image, text, scale, bias, match_keys=None):
        self.calls += 1
        logits = scale * image @ text.T
        labels = torch.arange(len(image))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        if bias is not None:
            loss = loss + 0 * bias
        return loss * float("nan") if self.calls >= 4 else loss




class KilledOnce(nn.Module):
    """A CLIP-style loss whose rank-1 worker is killed (SIGKILL) at its 5th call, on the first
    torchrun attempt only (``TORCHELASTIC_RESTART_COUNT`` = 0)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, image, text, scale, bias, match_keys=None):
        import os
        import signal

        self.calls += 1
        if (self.calls == 5 and os.environ.get("RANK") == "1"
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            os.kill(os.getpid(), signal.SIGKILL)
        logits = scale * image @ text.T
        labels = torch.arange(len(image))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return loss + 0 * bias if bias is not None else loss


@hookimpl
def register_losses(register):
    register(LossSpec(name="nan_after", build=lambda cfg: NanAfter(), init_logit_scale=2.0,
                      init_logit_bias=-1.0))
    register(LossSpec(name="killed_once", build=lambda cfg: KilledOnce(), init_logit_scale=2.0,
                      init_logit_bias=-1.0))
