"""``train.compile``: ``torch.compile`` on the towers' transformer blocks, as torchtitan does.

Every block of ``model.vision_blocks()`` and ``model.text_blocks()`` (the backbone contract) is
compiled in place (``nn.Module.compile``: parameters, state-dict keys and hooks are unchanged),
before DDP / FSDP2 wrapping, so FSDP2 shards compiled blocks and checkpoints stay the eager ones.
Blocks of one class share compiled code. Compiling per block, not the whole model, keeps the
graphs small and works with gradient checkpointing, LoRA adapters and the families' Python-level
control flow between blocks.

Where compilation cannot work, training runs eager after one warning that says why: a platform
without a C++ compiler (the inductor CPU backend needs one), or a block dynamo cannot trace (dynamo
falls back to eager for it: ``suppress_errors``).
"""

from __future__ import annotations

import os
import shutil
import sys

import torch
from torch import nn


def unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None."""
    if sys.version_info >= (3, 14):
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} yet"
    if device.type == "cpu" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")):
        return "the inductor CPU backend needs a C++ compiler (g++ or clang++; none is on PATH)"
    return None


def compile_blocks(model: nn.Module, device: torch.device) -> tuple[int, str | None]:
    """Compile ``model``'s blocks in place; ``(blocks compiled, why none were)``."""
    reason = unavailable(device)
    if reason:
        return 0, reason
    blocks = [*model.vision_blocks(), *model.text_blocks()]
    if not blocks:
        return 0, f"{model.model_type} lists no transformer blocks (vision_blocks / text_blocks)"
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a block dynamo cannot trace runs eager, with dynamo's warning
    for block in blocks:
        block.compile()
    return len(blocks), None
