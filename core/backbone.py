"""The backbone contract: what a backbone plugin's model, tokenizer and preprocessing provide.

The trainer, evaluator, inference and exporters depend only on this module. The API mirrors
open_clip's ``CLIP`` (``encode_image`` / ``encode_text`` / ``get_logits`` / ``lock_*_tower`` /
``set_grad_checkpointing``) so open_clip users recognise it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ClipcoreError
from core.intermediates import TowerIntermediates, image_output, take_indices, text_output


@attrs.frozen(kw_only=True)
class PreprocessSpec:
    """How an image becomes the model's input tensor; the data layer and the export sidecar use it.

    Pixels are RGB scaled to [0, 1], resized, then normalised with ``(x - mean) / std``.
    ``resize_mode``: ``squash`` resizes to (height, width) ignoring aspect; ``shortest`` resizes the
    shortest side to the target then centre-crops (height, width).
    """

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: Literal["squash", "shortest"]
    interpolation: Literal["bilinear", "bicubic"]

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "mean": list(self.mean), "std": list(self.std),
                "channel_order": "RGB", "scale": 1 / 255}


@attrs.frozen(kw_only=True)
class TextSpec:
    """The tokenisation rules a runtime needs to reproduce ``Tokenizer.__call__`` exactly.

    ``mask_policy`` is ``none``: every family here encodes text without a padding mask (the
    exported ``attention_mask`` input, when kept, is ignored). ``pooling`` documents which token
    the text tower pools (``last``, ``eos``, ``first``).
    """

    context_length: int
    pad_id: int
    padding_side: Literal["right", "left"] = "right"
    lowercase: bool = False
    canonicalize: bool = False
    strip_sep_token: bool = False
    mask_policy: Literal["none"] = "none"
    pooling: str = "last"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@runtime_checkable
class Tokenizer(Protocol):
    """Strings to fixed-length token ids.

    ``__call__(texts)`` returns an int64 tensor ``[len(texts), spec.context_length]`` for any
    input (empty, very long, non-ASCII), applying the family's canonicalisation, special tokens,
    truncation and padding. ``save_pretrained(directory)`` writes a Hugging Face tokenizer
    directory that, with ``spec``, reproduces the same ids without clipcore.
    """

    spec: TextSpec

    def __call__(self, texts: Sequence[str]) -> torch.Tensor: ...

    def save_pretrained(self, directory: str) -> None: ...


class ClipModel(nn.Module):
    """Base class of every backbone plugin's model.

    A subclass sets, in ``__init__``:

    - ``vision_tower`` / ``text_tower``: the two towers as submodules (projection heads
      included); everything else that is trainable (``logit_scale``, ``logit_bias``) is "other";
    - ``logit_scale``: ``nn.Parameter`` of shape ``[]`` in log space; ``logit_bias``:
      ``nn.Parameter`` of shape ``[]`` or ``None`` (CLIP-style models without a bias);
    - ``model_type``, ``embed_dim``, ``tokenizer`` (a :class:`Tokenizer`), ``preprocess``
      (a :class:`PreprocessSpec`);
    - ``export_refusal``: ``None`` if the model exports to ONNX, else the reason it cannot;
    - ``fsdp_wrap_classes``: the module classes FSDP shards as units (one per transformer block);
    - ``provenance``: where the weights came from, set by core when it builds the model (the
      checkpoint, merged LoRA adapters, a WiSE-FT α); exporters record it in the sidecar;
    - ``lora_targets``: ``{"vision": names, "text": names}``, the default LoRA targets inside the
      blocks (``model.peft``): submodule names of linear / conv layers (``q_proj``, ``qkv``) or
      parameter names ending in ``_weight`` for fused projections a module reads directly
      (``nn.MultiheadAttention``'s ``in_proj_weight``).

    and implements ``image_features``, ``text_features`` (unnormalised ``[B, embed_dim]``),
    ``vision_blocks`` / ``text_blocks`` (the ordered transformer blocks, for partial unlocking),
    ``image_intermediates`` / ``text_intermediates`` (block outputs, see
    :class:`core.TowerIntermediates`) and ``set_grad_checkpointing``. The base class provides the
    rest of open_clip's ``CLIP`` API: ``encode_*``, ``forward`` (tuple, or dict with
    ``output_dict=True``), ``get_logits``, ``lock_*_tower`` and ``forward_intermediates``.
    """

    model_type: str
    embed_dim: int
    tokenizer: Tokenizer
    preprocess: PreprocessSpec
    vision_tower: nn.Module
    text_tower: nn.Module
    logit_scale: nn.Parameter
    logit_bias: nn.Parameter | None
    export_refusal: str | None = None
    fsdp_wrap_classes: tuple[type[nn.Module], ...] = ()
    lora_targets: dict[str, tuple[str, ...]] = {}
    provenance: dict[str, Any] = {}

    # -- implemented by plugins ---------------------------------------------------------
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def vision_blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def text_blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def image_intermediates(self, images: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                            features: bool) -> TowerIntermediates:
        """The outputs of the vision blocks at ``indices`` (absolute, sorted); with ``stop_early`` the
        blocks after the last of them need not run (``features`` is then false); with ``features``
        the tower's output embedding too."""
        raise self._no_intermediates("image_intermediates")

    def text_intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                           features: bool) -> TowerIntermediates:
        """As :meth:`image_intermediates`, for the text blocks."""
        raise self._no_intermediates("text_intermediates")

    def _no_intermediates(self, method: str) -> ClipcoreError:
        return ClipcoreError(f"{type(self).__name__} ({self.model_type}) does not implement {method}, so it has no "
                             "block-level features (forward_intermediates, inference.features = patch)",
                             where="model.type", fix="update the backbone plugin to a version that implements "
                                                     "image_intermediates and text_intermediates")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        raise NotImplementedError

    # -- provided -----------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.image_features(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.text_features(input_ids)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None,
                output_dict: bool = False) -> tuple | dict[str, torch.Tensor | None]:
        """Normalised features of whichever inputs are given, the exponentiated logit scale and the
        bias, as open_clip returns them: ``(image_features, text_features, logit_scale[, logit_bias])``
        (the bias only when the model has one), or with ``output_dict`` a dict with those keys
        (``logit_bias`` is ``None`` without one)."""
        out = {
            "image_features": self.encode_image(image, normalize=True) if image is not None else None,
            "text_features": self.encode_text(text, normalize=True) if text is not None else None,
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }
        if output_dict:
            return out
        return tuple(out.values()) if self.logit_bias is not None else tuple(out.values())[:3]

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self(image, text, output_dict=True)
        logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
        if out["logit_bias"] is not None:
            logits = logits + out["logit_bias"]
        return logits, logits.T

    def forward_intermediates(
            self, image: torch.Tensor | None = None, text: torch.Tensor | None = None,
            image_indices: int | Sequence[int] | None = None, text_indices: int | Sequence[int] | None = None,
            stop_early: bool = False, normalize: bool = True, normalize_intermediates: bool = False,
            intermediates_only: bool = False, image_output_fmt: str = "NCHW", image_output_extra_tokens: bool = False,
            text_output_fmt: str = "NLC", text_output_extra_tokens: bool = False, output_logits: bool = False,
            output_logit_scale_bias: bool = False) -> dict[str, Any]:
        """Block-level features, with open_clip's arguments and output keys.

        ``*_indices``: ``None`` every block, an int the last ``n``, a list those blocks (negative
        from the end). ``stop_early`` skips the blocks after the last one taken when
        ``intermediates_only`` (the final features need every block). Keys: ``image_intermediates``
        (``[B, C, H', W']`` for NCHW, ``[B, N, C]`` for NLC: patch tokens), ``image_intermediates_prefix``
        (``[B, E, C]`` class / register / summary tokens, with ``image_output_extra_tokens``),
        ``image_intermediates_mask`` (NaFlex towers), ``text_intermediates`` (``[B, L, C]``),
        ``text_intermediates_suffix`` (a text class token, with ``text_output_extra_tokens``),
        ``image_features`` / ``text_features`` (L2-normalised with ``normalize``; not with
        ``intermediates_only``), ``image_logits`` / ``text_logits`` (``output_logits``, both inputs),
        ``logit_scale`` (exponentiated) and ``logit_bias`` (``output_logit_scale_bias``).
        """
        if intermediates_only:
            normalize, output_logits = False, False
        if output_logits and (image is None or text is None):
            raise ClipcoreError("output_logits needs both image and text", where="forward_intermediates",
                                fix="pass both inputs, or output_logits=False")
        out: dict[str, Any] = {}
        towers = [(image, self.image_intermediates, self.vision_blocks, image_indices, "image", image_output),
                  (text, self.text_intermediates, self.text_blocks, text_indices, "text", text_output)]
        formats = {"image": (image_output_fmt, image_output_extra_tokens),
                   "text": (text_output_fmt, text_output_extra_tokens)}
        for inputs, intermediates, blocks, indices, name, layout in towers:
            if inputs is None:
                continue
            taken = take_indices(len(blocks()), indices, name=f"{name}_indices")
            found = intermediates(inputs, taken, stop_early=stop_early and intermediates_only,
                                  features=not intermediates_only)
            fmt, extra = formats[name]
            out.update(layout(found, fmt=fmt, extra_tokens=extra, normalize=normalize_intermediates))
            if not intermediates_only:
                out[f"{name}_features"] = F.normalize(found.features, dim=-1) if normalize else found.features
        if output_logits:
            logits = self.logit_scale.exp() * out["image_features"] @ out["text_features"].T
            if self.logit_bias is not None:
                logits = logits + self.logit_bias
            out["image_logits"], out["text_logits"] = logits, logits.T
        if output_logit_scale_bias:
            out["logit_scale"] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
        return out

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower except its last ``unlocked_groups`` blocks (unlike open_clip, a
        group is always a block: the head after the last block stays frozen). BatchNorm running
        statistics of the frozen part keep updating in training mode unless ``freeze_bn_stats``."""
        _lock(self.vision_tower, self.vision_blocks(), unlocked_groups)
        for module in self.vision_tower.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.stats_frozen = freeze_bn_stats  # read by train()
        self.train(self.training)

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower except its last ``unlocked_layers`` blocks; with
        ``freeze_layer_norm = False`` its LayerNorms stay trainable everywhere."""
        _lock(self.text_tower, self.text_blocks(), unlocked_layers)
        if not freeze_layer_norm:
            for module in self.text_tower.modules():
                if is_layer_norm(module):
                    module.requires_grad_(True)

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by group: ``vision``, ``text`` and ``other`` (logit scale/bias)."""
        vision = {id(p) for p in self.vision_tower.parameters()}
        text = {id(p) for p in self.text_tower.parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"vision": [], "text": [], "other": []}
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = "vision" if id(p) in vision else "text" if id(p) in text else "other"
                groups[key].append((name, p))
        return groups

    def train(self, mode: bool = True) -> "ClipModel":
        """Like ``nn.Module.train``, but fully frozen modules stay in eval mode (a frozen
        BatchNorm of an image tower locked without ``freeze_bn_stats`` keeps updating its statistics)."""
        super().train(mode)
        if mode:
            for module in self.modules():
                params = list(module.parameters(recurse=True))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
            for module in self.modules():
                if getattr(module, "stats_frozen", True) is False:
                    module.train()
        return self


def is_layer_norm(module: nn.Module) -> bool:
    """A LayerNorm (torch's, or a library's class named ``*LayerNorm`` / ``*RMSNorm``)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def _lock(tower: nn.Module, blocks: Sequence[nn.Module], unlocked: int) -> None:
    if unlocked < 0:
        raise ClipcoreError(f"cannot leave {unlocked} blocks unlocked", where="lock_*_tower",
                            fix="give 0 (all frozen) or the number of last blocks to keep training")
    for p in tower.parameters():
        p.requires_grad_(False)
    if unlocked > 0:
        for block in list(blocks)[-unlocked:]:
            for p in block.parameters():
                p.requires_grad_(True)
    tower.train(tower.training)


def init_logit_params(scale: float, bias: float | None) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Fresh ``logit_scale`` (log space) and ``logit_bias`` parameters of shape ``[]``."""
    return (nn.Parameter(torch.tensor(float(scale))),
            None if bias is None else nn.Parameter(torch.tensor(float(bias))))


def refuse_model_keys(cfg: Any, family: str, *keys: str) -> None:
    """For a family's ``check(cfg)``: a ``ConfigError`` for the first of ``keys`` (``cfg.model``
    fields this family does not support) that the spec sets."""
    from core.errors import ConfigError

    for key in keys:
        if getattr(cfg.model, key) is not None:
            raise ConfigError(f"model.{key} is set, but the {family} family does not use it", where=f"model.{key}",
                              fix=f"remove model.{key} (or choose a model.type whose family supports it)")


@attrs.frozen(kw_only=True)
class BackboneFamily:
    """What ``register_backbones`` registers: one model family and the ``model.type`` names it builds.

    - ``name``: the family's name (``mine``); unique across plugins.
    - ``types``: the exact ``model.type`` names it builds.
    - ``build(cfg) -> ClipModel``: builds ``cfg.model.type`` from the whole experiment config, on
      whatever ``torch.device`` is current (the kit builds on ``meta``). It honours, or refuses in
      ``check``, the ``cfg.model`` keys:

      * ``pretrained``: ``True``: the type's published weights, found offline first, else a
        :class:`core.errors.ClipcoreError` naming every place looked and the ways to provide them;
        ``False``: random init, nothing downloaded; a string: a local file or directory (or an id /
        tag the family understands), a missing path raising ``ClipcoreError`` naming it. When core
        fills the model from a clipcore checkpoint (evaluate, export, resume) it calls ``build``
        with ``pretrained = False`` and loads the checkpoint strictly afterwards.
      * ``init_logit_scale`` / ``init_logit_bias``: read through :func:`core.weights.init_logit_values`,
        which returns what core resolved before ``build`` (the spec's values, else the loss's).
      * ``image_size`` (input resolution where the architecture allows it), ``tokenizer_path``,
        ``canonicalize_text`` (``None``: the family's default; reflected in ``tokenizer.spec``),
        ``adaptor_name`` (families with several text adaptors require it, the others refuse it:
        :func:`refuse_model_keys`).
    - ``tiny(model_type) -> ClipModel``: a random-weight model of that type's architecture at a tiny
      size (CPU forward well under a second), used by the conformance kit.
    - ``matches(model_type) -> bool``: optional, for open-ended names (``mine:<variant>``).
    - ``config_sections``: plugin-owned config tables (:class:`core.registry.ConfigSection`).
    - ``check(cfg)``: optional family-specific cross-field rules, run up front by
      :func:`core.spec.check` for every action that builds the model; raise
      :class:`core.errors.ConfigError` naming the key and the fix.
    - ``example_spec``: dotted overrides besides ``model.type`` that a minimal valid spec of this
      family needs (``("model.adaptor_name=mine",)``); the kit builds with them.
    """

    name: str
    types: tuple[str, ...]
    build: Callable[[Any], ClipModel]
    tiny: Callable[[str], ClipModel]
    description: str = ""
    matches: Callable[[str], bool] | None = None
    config_sections: tuple[Any, ...] = ()
    check: Callable[[Any], None] | None = None
    example_spec: tuple[str, ...] = ()
