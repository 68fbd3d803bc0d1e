"""The open_clip model configs clipcore adds (NV-CLIP and the demo model), registered with
``open_clip.add_model_config`` so ``open_clip.create_model(name)`` knows them too."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).with_name("model_configs")
NVCLIP_TYPES = tuple(f"ViT-{size}-14-SigLIP-CLIPA-{res}" for size, resolutions in
                     (("L", (84, 224, 336)), ("H", (84, 224, 336, 574))) for res in resolutions)
DEMO_TYPE = "clipcore-demo-tiny"
TYPES = (*NVCLIP_TYPES, DEMO_TYPE)
OPENCLIP_PREFIX = "openclip:"


@functools.cache
def register_with_open_clip() -> None:
    """Add clipcore's configs to open_clip's model registry (once per process)."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)


def model_config(name: str) -> dict[str, Any]:
    """A copy of the open_clip config of a clipcore type (``NV-CLIP`` or the demo model)."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text(encoding="utf-8"))


def tiny_config(name: str, vocab_size: int) -> dict[str, Any]:
    """``name``'s config at a tiny size: same tower kinds, pooling, masks and position tables."""
    cfg = copy.deepcopy(model_config(name))
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    cfg["embed_dim"] = 32
    vision.update(layers=2, width=32, head_width=16, image_size=2 * vision["patch_size"])
    text.update(layers=2, width=32, heads=2, vocab_size=vocab_size)
    return cfg
