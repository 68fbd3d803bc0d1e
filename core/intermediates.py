"""Block-level features of a tower, as :meth:`core.ClipModel.forward_intermediates` returns them.

A family implements ``image_intermediates`` / ``text_intermediates`` and returns a
:class:`TowerIntermediates` (raw block outputs, split into the sequence tokens and the extra
tokens); this module does what is the same for every family: which blocks to take (open_clip's
and timm's ``indices`` rule) and the output layout (NCHW or NLC, final norm, extra tokens).
"""

from __future__ import annotations

from typing import Sequence

import attrs
import torch
from torch import nn

from core.errors import ClipcoreError


@attrs.frozen(kw_only=True)
class TowerIntermediates:
    """One tower's outputs for :meth:`core.ClipModel.forward_intermediates`.

    - ``tokens``: the outputs of the blocks asked for, in block order, each ``[B, N, C]``: image
      patch tokens (row-major over ``grid``) or text tokens, without extra tokens;
    - ``extra``: the same blocks' extra tokens ``[B, E, C]`` (class, register and summary tokens
      before the patches of an image; a class token appended to a text), or ``None`` without any;
    - ``grids``: per block taken, the token grid ``(H', W')`` of an image tower (the same patch grid
      for every block of a ViT; a hierarchical tower's shrink), ``None`` for text;
    - ``mask``: ``[B, N]`` bool, the valid patches of a NaFlex tower, else ``None``;
    - ``features``: the tower's unnormalised embedding ``[B, D]`` (equal to ``image_features`` /
      ``text_features``) when asked for, else ``None``;
    - ``final_norm``: the tower's last norm layer, applied to intermediates for
      ``normalize_intermediates`` (``None``: the tower has none).
    """

    tokens: list[torch.Tensor]
    extra: list[torch.Tensor] | None = None
    grids: list[tuple[int, int]] | None = None
    mask: torch.Tensor | None = None
    features: torch.Tensor | None = None
    final_norm: nn.Module | None = None


def take_indices(num_blocks: int, indices: int | Sequence[int] | None, *, name: str) -> list[int]:
    """Absolute block indices, sorted: ``None`` all blocks, an int the last ``n``, a sequence those
    blocks (negative ones count from the end). Out of range: :class:`ClipcoreError`."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ClipcoreError(f"{name} = {indices} asks for the last {indices} blocks of a tower with {num_blocks}",
                                where=name, fix=f"use 1..{num_blocks}, a list of block indices, or None for all")
        return list(range(num_blocks - indices, num_blocks))
    if not indices:
        raise ClipcoreError(f"{name} is empty", where=name, fix="give at least one block index, or None for all")
    taken = []
    for i in indices:
        if not -num_blocks <= i < num_blocks:
            raise ClipcoreError(f"{name} has block index {i}, but the tower has {num_blocks} blocks",
                                where=name, fix=f"use indices in {-num_blocks}..{num_blocks - 1}")
        taken.append(i % num_blocks)
    return sorted(set(taken))


def run_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
               args: tuple = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``x`` through ``blocks`` (``block(x, *args)``; only up to the last index with ``stop_early``),
    and the outputs of the blocks at ``indices``: for families whose blocks take the hidden states
    and return them."""
    taken = []
    for i, block in enumerate(blocks[: max(indices) + 1] if stop_early else blocks):
        x = block(x, *args)
        if i in indices:
            taken.append(x)
    return x, taken


def image_output(found: TowerIntermediates, *, fmt: str, extra_tokens: bool, normalize: bool) -> dict[str, object]:
    """``image_intermediates`` (NCHW ``[B, C, H', W']`` or NLC ``[B, N, C]``), with
    ``image_intermediates_prefix`` and ``image_intermediates_mask`` when they apply."""
    if fmt not in ("NCHW", "NLC"):
        raise ClipcoreError(f"image_output_fmt = {fmt!r}", where="image_output_fmt", fix="use 'NCHW' or 'NLC'")
    tokens, extra = _normalized(found, normalize)
    if fmt == "NCHW":
        if found.mask is not None and not bool(found.mask.all()):
            raise ClipcoreError("the images of this batch have different patch grids (NaFlex padding)",
                                where="image_output_fmt", fix="use image_output_fmt='NLC' with image_intermediates_mask")
        tokens = [t.reshape(t.shape[0], h, w, t.shape[-1]).permute(0, 3, 1, 2).contiguous()
                  for t, (h, w) in zip(tokens, found.grids)]
    out: dict[str, object] = {"image_intermediates": tokens}
    if extra_tokens and extra is not None:
        out["image_intermediates_prefix"] = extra
    if found.mask is not None:
        out["image_intermediates_mask"] = found.mask
    return out


def text_output(found: TowerIntermediates, *, fmt: str, extra_tokens: bool, normalize: bool) -> dict[str, object]:
    """``text_intermediates`` (NLC), with ``text_intermediates_suffix`` when it applies."""
    if fmt != "NLC":
        raise ClipcoreError(f"text_output_fmt = {fmt!r}", where="text_output_fmt", fix="use 'NLC'")
    tokens, extra = _normalized(found, normalize)
    out: dict[str, object] = {"text_intermediates": tokens}
    if extra_tokens and extra is not None:
        out["text_intermediates_suffix"] = extra
    return out


def _normalized(found: TowerIntermediates, normalize: bool) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    if not normalize or found.final_norm is None:
        return found.tokens, found.extra
    norm = found.final_norm
    return [norm(t) for t in found.tokens], None if found.extra is None else [norm(t) for t in found.extra]
