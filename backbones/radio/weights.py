"""Reading a published C-RADIOv3 ``.pth.tar`` safely and mapping it onto timm and the adaptor head.

The file is a pickled dict ``{"args": argparse.Namespace, "state_dict": ..., "state_dict_ema": ...}``
(EMA weights preferred). It is read with ``torch.load(weights_only=True)``, allow-listing only
``argparse.Namespace``. Only the entries the model needs are read: the backbone (``base_model.*``,
mapped to timm ``NaFlexVit`` names, its CLS tokens included), the input conditioner (mean/std) and
the summary heads (``_heads.<index or name>.*``), after normalising keys (``module.`` stripped,
``*.parametrizations.weight.original`` → ``*.weight``, LayerScale ``grandma`` → ``gamma``). Every
other entry (training state such as loss statistics, per-patch feature heads, feature
normalisers) and every ``args`` field clipcore does not read is logged and ignored. Inside those
prefixes loading is strict: a key with no place in the model is an error that lists it.
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import re
from pathlib import Path
from typing import Any

import attrs
import torch

from core import ClipcoreError, load_torch_file

log = logging.getLogger(__name__)

# What the model reads from the state dict (after ``module.`` is stripped); all else is ignored.
MODEL_PREFIXES = ("base_model.", "input_conditioner.", "_heads.")
# The timm ViT's own register token: RADIO keeps its tokens in patch_generator.cls_token.
UNUSED_BACKBONE_KEY = "reg_token"
# The ``args`` fields clipcore reads (see RadioCheckpoint); the others are training settings.
ARGS_READ = ("teachers", "cpe_num_registers", "cls_token_per_teacher", "mlp_version")
SPECTRAL_BUFFER = re.compile(r"\.parametrizations\.weight\.\d+\.")


@attrs.frozen(kw_only=True)
class RadioCheckpoint:
    """A published RADIO checkpoint, normalised.

    ``trunk`` uses timm ``NaFlexVit`` key names; ``heads`` maps a head key (teacher index or
    name, as a string) to its adaptor state dict; ``mean``/``std`` come from the input conditioner.
    """

    path: Path
    args: argparse.Namespace
    trunk: dict[str, torch.Tensor]
    heads: dict[str, dict[str, torch.Tensor]]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def teachers(self) -> list[dict[str, Any]]:
        return list(getattr(self.args, "teachers", None) or [])

    @property
    def num_registers(self) -> int:
        return int(getattr(self.args, "cpe_num_registers", 0) or 0)

    @property
    def cls_per_teacher(self) -> bool:
        return bool(getattr(self.args, "cls_token_per_teacher", True))


def parse_checkpoint(raw: Any, path: Path, *, where: str) -> RadioCheckpoint:
    """Normalise the object :func:`load_file` read from ``path`` (``where``: the config key it came from)."""
    if not isinstance(raw, dict) or "args" not in raw or not ({"state_dict", "state_dict_ema"} & raw.keys()):
        keys = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        raise ClipcoreError(f"{path} is not a RADIO torch-hub checkpoint (no `args` + `state_dict`; found {keys})",
                            where=where, fix="use the published c-radio_v3-*_half.pth.tar, which holds the adaptor heads")
    args = raw["args"]
    if not isinstance(args, argparse.Namespace):
        raise ClipcoreError(f"{path}: `args` is a {type(args).__name__}, expected argparse.Namespace", where=where,
                            fix="use the published c-radio_v3-*_half.pth.tar")
    _check_mlp_version(args, path, where)
    state, ignored = model_entries(raw.get("state_dict_ema") or raw["state_dict"])
    _log_ignored(path, ignored, args)
    state = normalize_keys(state, path=path, where=where)

    base, heads, conditioner = {}, {}, {}
    for key, value in state.items():
        group, _, rest = key.partition(".")
        if group == "base_model" and rest != UNUSED_BACKBONE_KEY:
            base[rest] = value
        elif group == "_heads":
            name, _, param = rest.partition(".")
            heads.setdefault(name, {})[param] = value
        elif group == "input_conditioner":
            conditioner[rest] = value
    trunk, unmapped = to_timm_keys(base)
    if unmapped:
        raise ClipcoreError(
            f"{path}: {len(unmapped)} base_model.* keys have no place in the timm C-RADIOv3 model: "
            + ", ".join("base_model." + k for k in unmapped[:10]) + (" ..." if len(unmapped) > 10 else ""),
            where=where, fix="this file's layout differs from the published C-RADIOv3 torch-hub checkpoints; "
                             "please report it with these key names")
    mean, std = _conditioner(conditioner, path, where)
    return RadioCheckpoint(path=path, args=args, trunk=trunk, heads=heads, mean=mean, std=std)


def load_file(path: Path, *, where: str) -> Any:
    """``torch.load(weights_only=True)`` with only ``argparse.Namespace`` allow-listed (memory-mapped
    when the file is in the zip format); unreadable or unsafe files raise a ClipcoreError."""
    if not path.is_file():
        raise ClipcoreError(f"RADIO checkpoint not found: {path}", where=where,
                            fix="point it at the downloaded c-radio_v3-*_half.pth.tar (see README, RADIO-CLIP)")
    if path.suffix == ".safetensors":
        raise ClipcoreError(f"{path} is the Hugging Face backbone-only export, which has no adaptor heads",
                            where=where, fix="download the torch-hub file c-radio_v3-*_half.pth.tar from the "
                                             "same Hugging Face repository and point at it")
    return load_torch_file(path, where=where, allow=[argparse.Namespace], mmap=True)


def _check_mlp_version(args: argparse.Namespace, path: Path, where: str) -> None:
    version = getattr(args, "mlp_version", "v2")
    if version not in (None, "v2"):
        raise ClipcoreError(f"{path}: adaptor heads are mlp_version {version!r}; clipcore implements v2 "
                            "(C-RADIOv2.5 and later)", where=where, fix="use a C-RADIOv3 checkpoint")


def model_entries(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The entries under :data:`MODEL_PREFIXES` (``module.`` stripped), and the names of all others."""
    kept, ignored = {}, []
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(MODEL_PREFIXES):
            kept[key] = value
        else:
            ignored.append(key)
    return kept, ignored


def _log_ignored(path: Path, ignored: list[str], args: argparse.Namespace) -> None:
    """One line naming the ignored state-dict entries (grouped by their first name part), one
    (debug) naming the ignored ``args`` fields."""
    if ignored:
        groups = collections.Counter(key.split(".")[0] for key in ignored)
        log.info("%s: ignoring %d state-dict entries the model does not use: %s", path, len(ignored),
                 ", ".join(f"{name} ({count})" for name, count in sorted(groups.items())))
    unread = sorted(set(vars(args)) - set(ARGS_READ))
    if unread:
        log.debug("%s: ignoring args fields clipcore does not read: %s", path, ", ".join(unread))


def normalize_keys(state: dict[str, torch.Tensor], *, path: Path, where: str) -> dict[str, torch.Tensor]:
    """Fold identity parametrizations into plain weights, rename LayerScale ``grandma`` →
    ``gamma``. Spectral-norm buffers cannot be folded without the exact reparametrisation and
    are refused."""
    spectral = [k for k in state if SPECTRAL_BUFFER.search(k)]
    if spectral:
        raise ClipcoreError(
            f"{path}: weights are spectrally reparametrised ({spectral[0]} and {len(spectral) - 1} more); "
            "clipcore folds only identity parametrizations", where=where,
            fix="use the published C-RADIOv3 checkpoint, whose weights are stored plain")
    return {key.replace(".parametrizations.weight.original", ".weight").replace(".grandma", ".gamma"): value
            for key, value in state.items()}


def to_timm_keys(base: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """RADIO backbone keys (``base_model.`` stripped) → timm ``NaFlexVit`` keys, and the keys left over.

    The bias-free linear patch embedding over ``(C, ph, pw)``-flattened patches becomes timm's
    linear embedding over ``(ph, pw, C)`` patches with a zero bias; the 1-D position table becomes
    a square grid; the CLS tokens (one per teacher, then registers) become timm's ``cls_token``
    (first) and ``reg_token`` (the rest).
    """
    out, leftover = {}, []
    for key, value in base.items():
        if key == "patch_generator.embedder.weight":
            patch = math.isqrt(value.shape[1] // 3)
            out["embeds.proj.weight"] = value.reshape(value.shape[0], 3, patch, patch).permute(0, 2, 3, 1).flatten(1)
            out["embeds.proj.bias"] = value.new_zeros(value.shape[0])
        elif key == "patch_generator.pos_embed":
            grid = math.isqrt(value.shape[-2])
            out["embeds.pos_embed"] = value.reshape(1, grid, grid, value.shape[-1])
        elif key == "patch_generator.cls_token.token":
            out["embeds.cls_token"] = value[None, :1]
            out["embeds.reg_token"] = value[None, 1:]
        elif key.startswith("blocks."):
            out[key] = value
        else:
            leftover.append(key)
    return out, leftover


def _conditioner(state: dict[str, torch.Tensor], path: Path, where: str):
    if set(state) != {"norm_mean", "norm_std"}:
        raise ClipcoreError(f"{path}: input conditioner has keys {sorted(state)}, expected norm_mean and norm_std",
                            where=where, fix="use the published C-RADIOv3 checkpoint")
    return (tuple(float(v) for v in state["norm_mean"].flatten()),
            tuple(float(v) for v in state["norm_std"].flatten()))
