"""RADIO-CLIP: NVIDIA C-RADIOv3 (B, L, H, g) vision encoders with a teacher's adaptor head and text tower.

Built on open code only: timm's ``naflexvit_*_patch16_radio_v3`` backbone (Apache-2.0), adaptor
heads written here, SigLIP2 text towers from transformers and the DFN5B CLIP text tower from
open_clip. NVlabs' RADIO code (non-commercial licence) is neither imported nor reproduced.
"""

from __future__ import annotations

from core import BackboneFamily, hookimpl, lazy

from backbones.radio.config import SECTION
from backbones.radio.sizes import SIZES

FAMILY = BackboneFamily(
    name="radio", types=tuple(SIZES), build=lazy("backbones.radio.factory:build"),
    tiny=lazy("backbones.radio.factory:tiny"), check=lazy("backbones.radio.factory:check"),
    config_sections=(SECTION,), example_spec=("model.adaptor_name=siglip",),
    description="RADIO-CLIP: C-RADIOv3 B/L/H/g (timm) + adaptor head, with the SigLIP2 (`siglip`) or "
                "DFN CLIP (`clip`) teacher text tower; set model.adaptor_name.")


@hookimpl
def register_backbones(register):
    register(FAMILY)
