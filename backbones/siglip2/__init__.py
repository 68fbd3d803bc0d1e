"""SigLIP2 backbone plugin (Hugging Face transformers): the six So400m types TAO exposes.

Fixed-resolution types load as ``SiglipModel``, NaFlex as ``Siglip2Model`` (chosen by the
checkpoint's ``model_type``). See :mod:`backbones.siglip2.loading` for where weights come from and
:mod:`backbones.siglip2.tokenizer` for the text rules.
"""

from __future__ import annotations

from typing import Any

from core import BackboneFamily, hookimpl, lazy, refuse_model_keys

from backbones.siglip2.architectures import TYPES


def check(cfg: Any) -> None:
    """One text tower: no adaptor to choose."""
    refuse_model_keys(cfg, "siglip2", "adaptor_name")


FAMILY = BackboneFamily(
    name="siglip2", types=tuple(TYPES), build=lazy("backbones.siglip2.loading:build"),
    tiny=lazy("backbones.siglip2.loading:tiny"), check=check,
    description="SigLIP2 So400m (transformers): fixed-resolution SiglipModel and NaFlex Siglip2Model.")


@hookimpl
def register_backbones(register):
    register(FAMILY)
