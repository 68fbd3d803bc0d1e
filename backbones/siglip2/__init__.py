"""SigLIP2 backbone plugin (Hugging Face transformers): the six So400m types TAO exposes.

Fixed-resolution types load as ``SiglipModel``, NaFlex as ``Siglip2Model`` (chosen by the
checkpoint's ``model_type``). See :mod:`backbones.siglip2.loading` for where weights come from and
:mod:`backbones.siglip2.tokenizer` for the text rules.
"""

from __future__ import annotations

from core import BackboneFamily, hookimpl, lazy

from backbones.siglip2.architectures import TYPES


FAMILY = BackboneFamily(
    name="siglip2", types=tuple(TYPES), build=lazy("backbones.siglip2.loading:build"),
    tiny=lazy("backbones.siglip2.loading:tiny"),
    description="SigLIP2 So400m (transformers): fixed-resolution SiglipModel and NaFlex Siglip2Model.")


@hookimpl
def register_backbones(register):
    register(FAMILY)
