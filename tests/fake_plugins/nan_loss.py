"""``nan_after``: a CLIP-style loss that returns NaN from the 4th call on (fault injection)."""

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


@hookimpl
def register_losses(register):
    register(LossSpec(name="nan_after", build=lambda cfg: NanAfter(), init_logit_scale=2.0,
                      init_logit_bias=-1.0))
