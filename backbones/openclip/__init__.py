"""OpenCLIP / NV-CLIP backbone plugin (open_clip).

Types: the NV-CLIP ``ViT-{L,H}-14-SigLIP-CLIPA-*`` architectures (open_clip configs clipcore
ships, registered with ``open_clip.add_model_config``), ``clipcore-demo-tiny`` (a few-M-parameter
model trainable from scratch on a CPU) and ``openclip:<Name>`` for any model open_clip knows.
"""

from __future__ import annotations

from typing import Any

from core import BackboneFamily, hookimpl, lazy, refuse_model_keys

from backbones.openclip.configs import TYPES


def check(cfg: Any) -> None:
    """One text tower: no adaptor to choose."""
    refuse_model_keys(cfg, "openclip", "adaptor_name")


FAMILY = BackboneFamily(
    name="openclip", types=TYPES, build=lazy("backbones.openclip.loading:build"),
    tiny=lazy("backbones.openclip.loading:tiny"), check=check, matches=lazy("backbones.openclip.loading:matches"),
    description="NV-CLIP ViT-{L,H}-14-SigLIP-CLIPA, clipcore-demo-tiny, and openclip:<Name> for any open_clip model.")


@hookimpl
def register_backbones(register):
    register(FAMILY)
