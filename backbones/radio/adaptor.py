"""The summary adaptor head: a small MLP mapping one RADIO CLS token into a teacher's embedding space.

Layout (RADIO ``mlp_version`` v2, state-dict keys in brackets)::

    fc1 [fc1]: Linear(in → hidden)
    num_inner residual blocks [blocks.i.0, blocks.i.2]: x + Linear(GELU(LayerNorm(x)))
    final [final.0, final.2]: Linear(GELU(LayerNorm(x)) → out)

``hidden``, ``num_inner`` and ``out`` are read from tensor shapes: loading a state dict whose
shapes differ from the current ones (same input width) rebuilds the layers to match; do it
before an optimizer exists. A model built without weights thus accepts a checkpoint of the
published head whatever its hidden width and depth.
"""

from __future__ import annotations

import re

import torch
from torch import nn


def _residual_block(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden))


class AdaptorHead(nn.Module):
    """``forward(cls_token [B, in]) -> [B, out]``, unnormalised, computed outside autocast."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_inner: int = 1):
        super().__init__()
        self._build(in_dim, hidden, out_dim, num_inner)

    def _build(self, in_dim: int, hidden: int, out_dim: int, num_inner: int) -> None:
        self.in_dim, self.hidden, self.out_dim, self.num_inner = in_dim, hidden, out_dim, num_inner
        self.fc1 = nn.Linear(in_dim, hidden)
        self.blocks = nn.ModuleList(_residual_block(hidden) for _ in range(num_inner))
        self.final = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    @staticmethod
    def shape_of(state: dict[str, torch.Tensor], prefix: str = "") -> tuple[int, int, int, int]:
        """``(in_dim, hidden, out_dim, num_inner)`` of the head stored under ``prefix`` in ``state``."""
        fc1, final = state[prefix + "fc1.weight"], state[prefix + "final.2.weight"]
        inner = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k))}
        return fc1.shape[1], fc1.shape[0], final.shape[0], len(inner)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if prefix + "fc1.weight" in state_dict and prefix + "final.2.weight" in state_dict:
            shape = self.shape_of(state_dict, prefix)
            if shape[0] == self.in_dim and shape != (self.in_dim, self.hidden, self.out_dim, self.num_inner):
                ref = self.fc1.weight
                self._build(*shape)
                self.to(device=ref.device, dtype=ref.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.fc1.weight.dtype  # fp32 unless the module itself was cast
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.fc1(x.to(dtype))
            for block in self.blocks:
                x = x + block(x)
            return self.final(x)
