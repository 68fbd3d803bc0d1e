"""Build the model an action needs: the configured type from its plugin, optionally filled from a
clipcore checkpoint.

The logit init is resolved here, once, before ``BackboneFamily.build(cfg)``: ``model.init_logit_*``
where the spec sets them, else the loss's (``LossSpec.init_logit_scale`` / ``init_logit_bias``; the
loss of ``train.loss_type`` for every action). The weights decide whether the model has a
``logit_bias``: only training adds one, with the loss's init, where the weights have none;
``evaluate``, ``inference`` and ``export`` never do. Families read the result through
:func:`core.weights.init_logit_values`. A checkpoint with LoRA adapters (``model.peft``) gets its
adapters back before its weights load (an adapter-only one gets its base weights from the
reference it stores first); outside training the adapters are then merged into the weights.
"""

from __future__ import annotations

import logging

import attrs

from core.backbone import ClipModel
from core.errors import ClipcoreError, ConfigError
from core.runtime.lora import add_adapters, load_adapter_state, merge_adapters
from core.weights import load_checkpoint, load_model_weights
from core.registry import get_registry

log = logging.getLogger("clipcore")


def with_loss_logit_init(cfg, loss):
    """``cfg`` with ``model.init_logit_scale`` / ``init_logit_bias`` taken from the training loss
    (``LossSpec``) where the spec leaves them unset."""
    m = cfg.model
    return attrs.evolve(cfg, model=attrs.evolve(
        m, init_logit_scale=loss.init_logit_scale if m.init_logit_scale is None else m.init_logit_scale,
        init_logit_bias=loss.init_logit_bias if m.init_logit_bias is None else m.init_logit_bias))


def build_model(cfg, checkpoint: str | None = None, *, key: str = "checkpoint", loss=None) -> ClipModel:
    """The model for ``cfg.model.type``.

    With ``checkpoint`` (a clipcore checkpoint; ``key`` is the config key it came from) the
    architecture is built without downloading pretrained weights and filled from the file;
    without it, weights come from ``cfg.model.pretrained``. ``loss`` (the training loss's
    ``LossSpec``) is given by training only: its logit init fills what the spec leaves unset.
    """
    registry = get_registry()
    family = registry.backbone_for(cfg.model.type)
    configured = registry.entries["losses"].get(cfg.train.loss_type)
    init_from = loss or (configured.obj if configured else None)
    m = (with_loss_logit_init(cfg, init_from) if init_from is not None else cfg).model
    if loss is None:
        m = attrs.evolve(m, init_logit_bias=None)  # only the weights bring a bias
    ckpt = base = None
    if checkpoint:
        ckpt = load_checkpoint(checkpoint, key=key)
        base = ckpt.get("base")  # an adapter-only LoRA checkpoint names its base weights
        saved_bias = "logit_bias" in ckpt.get("model", {})
        m = attrs.evolve(m, pretrained=base["pretrained"] if base else False,
                         init_logit_bias=0.0 if saved_bias and m.init_logit_bias is None else m.init_logit_bias)
    try:
        model = family.build(attrs.evolve(cfg, model=m))
        if base and base.get("pretrained_model_path"):
            # the adapter file brings the trained logit bias when the base had none
            load_model_weights(model, base["pretrained_model_path"], key=key, keep_initial_bias=True)
    except ClipcoreError as err:
        if base is None:
            raise
        raise ClipcoreError(f"the base weights of the LoRA checkpoint {checkpoint} cannot be loaded: {err.what}",
                            where=key, fix=err.fix or "restore the base weights it was trained from") from None
    adapted = ckpt is not None and any(".lora_" in name for name in ckpt.get("model", {}))
    if adapted:
        if not cfg.model.peft.enabled:
            raise ConfigError(f"{checkpoint} holds LoRA adapters, but model.peft.enabled is false", where=key,
                              fix="set model.peft.enabled = true with the [model.peft] settings it was trained with "
                                  "(config.toml beside the checkpoint has them)")
        add_adapters(model, cfg.model.peft)
    if base is not None:
        load_adapter_state(model, ckpt, checkpoint, key=key)
    elif ckpt is not None:
        load_model_weights(model, checkpoint, key=key, checkpoint=ckpt, keep_initial_bias=loss is not None)
    if adapted and loss is None:
        merge_adapters(model)  # evaluate, inference and export run the base architecture with merged weights
    if ckpt is not None:
        model.provenance = {"checkpoint": str(checkpoint),
                            **({"lora_merged": attrs.asdict(cfg.model.peft)} if adapted and loss is None else {}),
                            **({"wise_ft": ckpt["wise_ft"]} if "wise_ft" in ckpt else {})}
    if loss is not None and model.logit_bias is not None and (ckpt is None or "logit_bias" not in ckpt["model"]):
        log.info("the %s loss trains a logit bias; the model's starts at %.4g", loss.name, model.logit_bias.item())
    return model
