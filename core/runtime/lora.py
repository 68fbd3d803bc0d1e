"""Low-rank adapters on a ClipModel, through the ``peft`` library (``model.peft``, TAO's fields).

:func:`add_adapters` injects one peft adapter per tower (``vision``, ``text``) into the modules
named by ``model.peft.<tower>.target_modules`` (else the model's ``lora_targets``) inside the last
``num_last_blocks`` blocks, and leaves trainable only the adapters and the logit scale / bias. A
target is a submodule name (``q_proj``, ``qkv``: nn.Linear / nn.Conv2d) or a parameter name ending
in ``_weight`` (``in_proj_weight``: a fused attention projection that ``nn.MultiheadAttention``
reads directly, adapted through peft's parameter wrapper; its ``out_proj`` is refused, since an
adapter there would never run). At init every adapter's B matrix is
zero, so the adapted model equals the base model. :func:`merge_adapters` folds the adapters into
the base weights and removes every peft module, giving the base architecture back.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from torch import nn

from core.backbone import ClipModel
from core.errors import ConfigError

TOWERS = ("vision", "text")
KEEP_TRAINABLE = ("logit_scale", "logit_bias")  # besides the adapters


def adapter_targets(model: ClipModel, tower: str, tower_cfg: Any) -> tuple[list[str], list[str]]:
    """``(module names, parameter names)`` (full dotted names in ``model``) to adapt in ``tower``."""
    blocks = list(model.vision_blocks() if tower == "vision" else model.text_blocks())
    chosen = blocks if tower_cfg.num_last_blocks == 0 else blocks[-tower_cfg.num_last_blocks:]
    wanted = list(tower_cfg.target_modules) or list(getattr(model, "lora_targets", {}).get(tower, ()))
    key = f"model.peft.{tower}.target_modules"
    if not wanted:
        raise ConfigError(f"{model.model_type} declares no default LoRA targets for its {tower} tower", where=key,
                          fix="name the modules to adapt, e.g. target_modules = [\"qkv\", \"proj\"]")
    full = {id(m): name for name, m in model.named_modules()}
    modules, params, seen = [], [], set()
    for block in chosen:
        prefix = full[id(block)]
        fused = {f"{n}.out_proj" for n, m in block.named_modules() if isinstance(m, nn.MultiheadAttention)}
        for name, sub in block.named_modules():
            last = name.rpartition(".")[2]
            seen.add(last)
            if last in wanted and name in fused:
                raise ConfigError(f"LoRA target {last!r} is the output projection of an nn.MultiheadAttention in "
                                  f"{model.model_type}, which reads its weight directly: an adapter there would "
                                  "never take effect", where=key,
                                  fix="adapt the fused in_proj_weight and the MLP instead (the family's defaults)")
            if last in wanted and isinstance(sub, (nn.Linear, nn.Conv2d)):
                modules.append(f"{prefix}.{name}")
        for name, _ in block.named_parameters():
            if name.rpartition(".")[2] in wanted:
                params.append(f"{prefix}.{name}")
                seen.add(name.rpartition(".")[2])
    missing = [w for w in wanted if not any(n.rpartition(".")[2] == w for n in modules + params)]
    if missing:
        names = sorted(n for n in seen if n and not n.isdigit())
        raise ConfigError(f"LoRA target {missing[0]!r} matches no linear layer or weight in the last "
                          f"{len(chosen)} {tower} blocks of {model.model_type}", where=key,
                          fix="use names of this family's modules: " + ", ".join(names[:40]))
    return modules, params


def _check_rank(model: ClipModel, names: list[str], rank: int, tower: str) -> None:
    for name in names:
        weight = model.get_submodule(name).weight
        smallest = min(weight.shape[0], weight[0].numel())  # outputs, inputs (× kernel for a conv)
        if rank > smallest:
            raise ConfigError(f"LoRA rank {rank} is larger than {name} allows ({weight.shape[0]} outputs, "
                              f"{weight[0].numel()} inputs)",
                              where=f"model.peft.{tower}.rank", fix=f"use a rank of at most {smallest}")


def add_adapters(model: ClipModel, peft_cfg: Any) -> ClipModel:
    """Inject the adapters ``peft_cfg`` (``cfg.model.peft``) asks for into ``model`` in place and
    freeze everything else but the logit scale / bias; returns ``model``.

    Module targets get one peft adapter per tower (its rank, alpha, dropout; DoRA with
    ``method = "dora"``). Parameter targets of both towers share one adapter, ``fused`` (peft allows
    one parameter adapter per model), with each tower's rank and alpha; peft's parameter wrapper has
    no dropout and no DoRA, so those adapters are plain LoRA without dropout.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    fused: dict[str, Any] = {}
    for tower in TOWERS:
        tower_cfg = getattr(peft_cfg, tower)
        if not tower_cfg.enabled:
            continue
        modules, params = adapter_targets(model, tower, tower_cfg)
        _check_rank(model, modules, tower_cfg.rank, tower)
        fused.update(dict.fromkeys(params, tower_cfg))
        if modules:
            inject_adapter_in_model(LoraConfig(r=tower_cfg.rank, lora_alpha=tower_cfg.alpha,
                                               lora_dropout=tower_cfg.dropout, use_dora=peft_cfg.method == "dora",
                                               target_modules=modules), model, adapter_name=tower)
    if fused:
        first = next(iter(fused.values()))
        exact = {f"^{re.escape(name)}$": c for name, c in fused.items()}
        with warnings.catch_warnings():  # peft applies the patterns to parameter names but checks them
            warnings.filterwarnings("ignore", r"The following (rank|alpha)_pattern keys did not match")  # on modules
            inject_adapter_in_model(LoraConfig(r=first.rank, lora_alpha=first.alpha, target_parameters=list(fused),
                                               rank_pattern={k: c.rank for k, c in exact.items()},
                                               alpha_pattern={k: c.alpha for k, c in exact.items()}),
                                    model, adapter_name="fused")
    for module in model.modules():  # a new adapter activates itself everywhere: each layer runs its own
        if isinstance(module, LoraLayer):
            module.set_adapter(list(module.lora_A.keys()))
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or name in KEEP_TRAINABLE)
    return model


def has_adapters(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the base module back (the base
    architecture, no peft modules left); returns ``model``."""
    from peft.tuners.lora import LoraLayer

    while True:
        layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
        if not layers:
            return model
        name, layer = layers[-1]  # innermost first: wrappers may nest
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())


# --------------------------------------------------------------------------- adapter-only checkpoints
def base_reference(cfg: Any) -> dict[str, Any] | None:
    """Where a LoRA run's base weights come from (stored in its checkpoints instead of the weights),
    or ``None`` when they cannot be found again (random init: the checkpoint keeps every weight)."""
    path = cfg.train.pretrained_model_path
    if cfg.model.pretrained is False and not path:
        return None
    return {"pretrained": cfg.model.pretrained, "pretrained_model_path": path}


def adapter_state(model_state: dict[str, Any]) -> dict[str, Any]:
    """The trained part of a LoRA model's state dict: the adapters and the logit scale / bias."""
    return {k: v for k, v in model_state.items() if ".lora_" in k or k in KEEP_TRAINABLE}


def load_adapter_state(model: ClipModel, ckpt: dict[str, Any], path: Any, *, key: str) -> None:
    """Load an adapter-only checkpoint into ``model`` (its base weights and adapters already in
    place): every adapter of the model must be in the file and nothing else may be."""
    from core.errors import ClipcoreError

    if ckpt.get("model_type") != model.model_type:
        raise ClipcoreError(f"{path} was saved for model type {ckpt.get('model_type')!r}, but model.type is "
                            f"{model.model_type!r}", where=key, fix=f"set model.type = {ckpt.get('model_type')!r}")
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    lost = [k for k in missing if ".lora_" in k]
    if lost or unexpected:
        raise ClipcoreError(f"{path} does not match the adapters [model.peft] builds: {len(lost)} missing "
                            f"(e.g. {lost[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})", where=key,
                            fix="use the [model.peft] settings the run was trained with (its config.toml)")
