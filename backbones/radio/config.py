"""The ``[model.radio]`` config section, owned by the RADIO plugin."""

from __future__ import annotations

import attrs

from core import ConfigSection, opt


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


SECTION = ConfigSection("model.radio", RadioConfig)
