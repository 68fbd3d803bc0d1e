"""The ``[model.radio]`` config section, owned by the RADIO plugin."""

from __future__ import annotations

from typing import Any

import attrs

from core.config import opt
from core.errors import ConfigError

SECTION = "model.radio"


@attrs.define(kw_only=True)
class RadioConfig:
    text_tower: str | None = opt(
        None, "The adaptor's teacher text tower: for `siglip`, a SigLIP2 Hugging Face model directory "
              "(config.json, model.safetensors, tokenizer files); for `clip`, the DFN5B open_clip weights "
              "file (open_clip_model.safetensors / open_clip_pytorch_model.bin) or its directory. Unset: the "
              "teacher's repository in the Hugging Face cache (see README, RADIO-CLIP).")
    cpe_train_augment: bool = opt(
        False, "Train-time position-grid augmentation (random window of the 128x128 grid per sample, "
               "zeroed for 10% of samples), as RADIO was pre-trained; off: eval-style positions always.")
    align_corners: bool | None = opt(
        None, "Position-grid resize mode; unset: the released weights' mode (true for B and H, false for "
              "L and g). Override only for checkpoints trained otherwise.")


def radio_options(cfg: Any) -> RadioConfig:
    """The ``model.radio`` section of ``cfg`` (defaults when absent)."""
    value = getattr(cfg, "plugins", {}).get(SECTION)
    if value is None:
        return RadioConfig()
    if isinstance(value, RadioConfig):
        return value
    if isinstance(value, dict):
        try:
            return RadioConfig(**value)
        except TypeError as exc:
            raise ConfigError(f"invalid [{SECTION}] table: {exc}", where=SECTION,
                              fix="valid keys: " + ", ".join(f.name for f in attrs.fields(RadioConfig))) from None
    raise ConfigError(f"[{SECTION}] is a {type(value).__name__}, expected a table", where=SECTION)
