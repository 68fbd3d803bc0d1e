"""Checks every backbone type passes, run on ``family.tiny(model_type)`` (a fresh model each).

Each check takes ``(entry, model_type)`` (``entry.obj`` is the :class:`core.backbone.BackboneFamily`)
and raises ``AssertionError`` naming the plugin, the type and the rule. ``BACKBONE_CHECKS`` lists
them for the kit.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.backbone import ClipModel, PreprocessSpec, TextSpec, Tokenizer, is_layer_norm
from core.errors import ClipcoreError
from core.registry import Entry

CAPTIONS = ["a photo of a cat", "the red car on the road", "two dogs"]
ODD_CAPTIONS = ["", " ".join(["a very long caption"] * 500), "ünïcödé 東京 🐱 — ça va?"]
TOLERANCE = 1e-5


def per_type(fn: Callable) -> Callable:
    """Mark a check to run once per model type of a family."""
    fn.per_type = True
    return fn


def _fail(entry: Entry, model_type: str, rule: str, detail: str) -> AssertionError:
    return AssertionError(f"backbone plugin {entry.provider.plugin!r}, type {model_type!r}: {rule}: {detail}")


def _tiny(entry: Entry, model_type: str, seed: int = 0) -> ClipModel:
    torch.manual_seed(seed)
    model = entry.obj.tiny(model_type)
    if not isinstance(model, ClipModel):
        raise _fail(entry, model_type, "tiny() returns a core.backbone.ClipModel", f"got {type(model).__name__}")
    return model.eval()


def _inputs(model: ClipModel, batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    spec = model.preprocess
    return torch.randn(batch, 3, spec.height, spec.width), model.tokenizer(CAPTIONS[:batch])


def _loss(model: ClipModel, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logits, _ = model.get_logits(images, ids)
    return F.cross_entropy(logits, torch.arange(len(logits)))


@per_type
def check_output_shapes(entry: Entry, model_type: str) -> None:
    """Rule: encode_image / encode_text return float [B, embed_dim]."""
    model = _tiny(entry, model_type)
    images, ids = _inputs(model)
    with torch.no_grad():
        for name, out in (("encode_image", model.encode_image(images)), ("encode_text", model.encode_text(ids))):
            if tuple(out.shape) != (3, model.embed_dim) or not out.is_floating_point():
                raise _fail(entry, model_type, f"{name} returns float [B, embed_dim]",
                            f"got {out.dtype} {list(out.shape)} with embed_dim={model.embed_dim}")


@per_type
def check_normalize_gives_unit_vectors(entry: Entry, model_type: str) -> None:
    """Rule: normalize=True returns L2-unit rows."""
    model = _tiny(entry, model_type)
    images, ids = _inputs(model)
    with torch.no_grad():
        for name, out in (("image", model.encode_image(images, normalize=True)),
                          ("text", model.encode_text(ids, normalize=True))):
            norms = out.norm(dim=-1)
            if not torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
                raise _fail(entry, model_type, f"normalized {name} features have unit norm", f"norms {norms.tolist()}")


@per_type
def check_single_equals_batched(entry: Entry, model_type: str) -> None:
    """Rule: an input encoded alone equals the same input encoded in a batch (1e-5)."""
    model = _tiny(entry, model_type)
    images, ids = _inputs(model)
    with torch.no_grad():
        for name, encode, batch in (("image", model.encode_image, images), ("text", model.encode_text, ids)):
            diff = (encode(batch[1:2]) - encode(batch)[1:2]).abs().max().item()
            if diff > TOLERANCE:
                raise _fail(entry, model_type, f"an {name} alone equals it in a batch", f"max abs diff {diff:.2e}")


@per_type
def check_eval_is_deterministic(entry: Entry, model_type: str) -> None:
    """Rule: in eval mode two forward passes give identical features."""
    model = _tiny(entry, model_type)
    images, ids = _inputs(model)
    with torch.no_grad():
        first, second = model(images, ids, output_dict=True), model(images, ids, output_dict=True)
    for key in ("image_features", "text_features"):
        if not torch.equal(first[key], second[key]):
            raise _fail(entry, model_type, "eval mode is deterministic", f"{key} differ between two passes")


@per_type
def check_gradients_reach_both_towers(entry: Entry, model_type: str) -> None:
    """Rule: a loss on the logits gives a finite gradient to every trainable parameter of both towers
    and to the logit scale."""
    model = _tiny(entry, model_type).train()
    _loss(model, *_inputs(model)).backward()
    for tower in ("vision", "text", "other"):
        params = model.parameter_groups()[tower]
        if not params:
            raise _fail(entry, model_type, "parameter_groups() has vision, text and other parameters",
                        f"the {tower} group is empty")
        missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
        if missing:
            raise _fail(entry, model_type, f"gradients reach every trainable {tower} parameter",
                        f"{len(missing)} without a finite gradient, e.g. {missing[:3]}")
        if tower != "other" and not any(p.grad.abs().sum() > 0 for _, p in params):
            raise _fail(entry, model_type, f"gradients reach the {tower} tower", "all gradients are zero")


@per_type
def check_frozen_towers(entry: Entry, model_type: str) -> None:
    """Rule: a locked tower has no trainable parameters, stays in eval mode under train(), is
    unchanged by an optimizer step and has no optimizer state; ``unlocked`` last blocks train."""
    for tower in ("vision", "text"):
        model = _tiny(entry, model_type)
        lock = model.lock_image_tower if tower == "vision" else model.lock_text_tower
        module = model.vision_tower if tower == "vision" else model.text_tower
        lock(0)
        model.train()
        if module.training or any(p.requires_grad for p in module.parameters()):
            raise _fail(entry, model_type, f"a locked {tower} tower is frozen and in eval mode",
                        f"training={module.training}, trainable={sum(p.requires_grad for p in module.parameters())}")
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        trainable = [p for group in model.parameter_groups().values() for _, p in group]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        _loss(model, *_inputs(model)).backward()
        optimizer.step()
        changed = [n for n, p in module.named_parameters() if not torch.equal(p, before[n])]
        frozen_ids = {id(p) for p in module.parameters()}
        with_state = [p for p in optimizer.state if id(p) in frozen_ids]
        if changed or with_state:
            raise _fail(entry, model_type, f"a frozen {tower} tower is unchanged by a step and has no optimizer state",
                        f"{len(changed)} changed (e.g. {changed[:2]}), {len(with_state)} with optimizer state")
        blocks = list(model.vision_blocks() if tower == "vision" else model.text_blocks())
        lock(1)
        last, first = blocks[-1], blocks[0]
        if not all(p.requires_grad for p in last.parameters()) or any(p.requires_grad for p in first.parameters()):
            raise _fail(entry, model_type, f"unlocking 1 {tower} block trains exactly the last block",
                        "the last block is not trainable or the first one is")


@per_type
def check_grad_checkpointing_matches(entry: Entry, model_type: str) -> None:
    """Rule: gradient checkpointing gives the same loss and gradients."""
    results = []
    for enable in (False, True):
        model = _tiny(entry, model_type).train()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(2)
        loss = _loss(model, *_inputs(model))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_off, grads_off), (loss_on, grads_on) = results
    if not torch.allclose(loss_off, loss_on, atol=TOLERANCE) or grads_off.keys() != grads_on.keys():
        raise _fail(entry, model_type, "gradient checkpointing keeps the loss and the set of gradients",
                    f"loss {loss_off.item():.6f} vs {loss_on.item():.6f}")
    worst = max(((g - grads_on[n]).abs().max().item(), n) for n, g in grads_off.items())
    if worst[0] > 1e-4:
        raise _fail(entry, model_type, "gradient checkpointing keeps the gradients",
                    f"{worst[1]} differs by {worst[0]:.2e}")


def _spec(entry: Entry, model_type: str, *overrides: str) -> Any:
    """A loaded config for ``model_type``: the family's ``example_spec`` plus ``overrides``."""
    from core.spec.load import load_config

    return load_config(None, [f"model.type={model_type}", *entry.obj.example_spec, *overrides])


@per_type
def check_build_from_spec(entry: Entry, model_type: str) -> None:
    """Rule: ``build(cfg)`` with ``model.pretrained = false`` builds a ClipModel of that type (on the
    meta device, so no size is too large to check), and a ``model.pretrained`` path that does not
    exist raises ClipcoreError naming it."""
    with torch.device("meta"):
        try:
            model = entry.obj.build(_spec(entry, model_type, "model.pretrained=false"))
        except Exception as exc:
            raise _fail(entry, model_type, "build(cfg) with model.pretrained = false builds the model",
                        f"{type(exc).__name__}: {exc}") from None
    if not isinstance(model, ClipModel) or model.model_type != model_type:
        raise _fail(entry, model_type, "build(cfg) returns a ClipModel of cfg.model.type",
                    f"got {type(model).__name__} of type {getattr(model, 'model_type', None)!r}")
    with tempfile.TemporaryDirectory() as directory:
        missing = Path(directory) / "missing" / "weights.safetensors"
        try:
            with torch.device("meta"):
                entry.obj.build(_spec(entry, model_type, f"model.pretrained={missing}"))
        except ClipcoreError as exc:
            if str(missing) not in str(exc):
                raise _fail(entry, model_type, "a missing model.pretrained path is named in the error",
                            str(exc)) from None
        except Exception as exc:
            raise _fail(entry, model_type, "a missing model.pretrained path raises ClipcoreError",
                        f"got {type(exc).__name__}: {exc}") from None
        else:
            raise _fail(entry, model_type, "a missing model.pretrained path raises ClipcoreError",
                        f"build() accepted {missing}")


@per_type
def check_tokenizer_reproducible_without_torch(entry: Entry, model_type: str) -> None:
    """Rule: the directory ``tokenizer.save_pretrained`` writes, with ``tokenizer.spec``, gives the
    same ids without torch (:class:`core.preprocess.SidecarTokenizer`, what deploy runners use)."""
    from core.preprocess import SidecarTokenizer

    tokenizer = _tiny(entry, model_type).tokenizer
    texts = CAPTIONS + ODD_CAPTIONS
    with tempfile.TemporaryDirectory() as directory:
        try:
            tokenizer.save_pretrained(directory)
            have = SidecarTokenizer(directory, tokenizer.spec.to_dict())(texts)
        except Exception as exc:
            raise _fail(entry, model_type, "the saved tokenizer directory and TextSpec reproduce the ids",
                        f"{type(exc).__name__}: {exc}") from None
    want = tokenizer(texts).numpy()
    rows = [i for i in range(len(texts)) if not (have[i] == want[i]).all()]
    if rows:
        raise _fail(entry, model_type, "the saved tokenizer directory and TextSpec reproduce the ids",
                    f"{texts[rows[0]][:40]!r}: {want[rows[0]][:12].tolist()} vs {have[rows[0]][:12].tolist()}")


@per_type
def check_export_matches_runtime(entry: Entry, model_type: str) -> None:
    """Rule: a type without ``export_refusal`` exports with every registered exporter that can run
    its files, and the runtime's normalised embeddings match PyTorch's (cosine >= 0.9999)."""
    from core.registry import get_registry

    model = _tiny(entry, model_type)
    if model.export_refusal is not None:
        return
    images, ids = _inputs(model)
    with torch.no_grad():
        want = {"images": model.encode_image(images, normalize=True).numpy(),
                "texts": model.encode_text(ids, normalize=True).numpy()}
    for exporter in get_registry().entries["exporters"].values():
        if exporter.obj.open_runner is None:
            continue
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / f"model{exporter.obj.suffixes[0]}"
            cfg = _spec(entry, model_type, f"export.onnx_file={path}")
            try:
                exporter.obj.export(model, cfg)
                runner = exporter.obj.open_runner(path)
                have = {"images": runner.encode_images(images.numpy()),
                        "texts": runner.encode_texts(CAPTIONS[:len(images)])}
            except Exception as exc:
                raise _fail(entry, model_type, f"the model exports with {exporter.name!r} and its runner opens it",
                            f"{type(exc).__name__}: {exc}") from None
        for name in want:
            cosine = float((have[name] * want[name]).sum(-1).min())
            if cosine < 0.9999:
                raise _fail(entry, model_type, f"{exporter.name!r} runtime {name} embeddings match PyTorch",
                            f"lowest cosine {cosine:.6f}")


@per_type
def check_grad_checkpointing_recomputes(entry: Entry, model_type: str) -> None:
    """Rule: ``set_grad_checkpointing(True)`` makes backward recompute blocks of both towers (modules
    of the first block of each run again during backward, however the block is checkpointed)."""
    model = _tiny(entry, model_type).train()
    model.set_grad_checkpointing(True)
    calls = {"vision": 0, "text": 0}
    hooks = [module.register_forward_hook(lambda *_, tower=tower: calls.__setitem__(tower, calls[tower] + 1))
             for tower, blocks in (("vision", list(model.vision_blocks())), ("text", list(model.text_blocks())))
             if blocks for module in blocks[0].modules()]
    try:
        loss = _loss(model, *_inputs(model))
        forward = dict(calls)
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    lazy = [tower for tower in calls if calls[tower] <= forward[tower]]
    if lazy:
        raise _fail(entry, model_type, "gradient checkpointing recomputes both towers in backward",
                    f"no recomputation in the {' and '.join(lazy)} tower")


@per_type
def check_lora_adapters(entry: Entry, model_type: str) -> None:
    """Rule: LoRA on the model's ``lora_targets`` (``model.peft`` defaults, both towers) applies,
    leaves the model unchanged at init, every adapted layer runs in eval mode (no module reads a
    wrapped layer's weight directly, no fused fast path skips it), and merging gives back the base
    architecture with the adapted outputs (1e-4)."""
    from peft.tuners.lora import LoraLayer

    from core.runtime.lora import add_adapters, merge_adapters
    from core.spec.load import load_config

    model = _tiny(entry, model_type)
    images, ids = _inputs(model, batch=2)

    def towers() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return model.encode_image(images), model.encode_text(ids)

    base, keys = towers(), set(model.state_dict())
    try:
        add_adapters(model, load_config(None, ["model.peft.enabled=true", "model.peft.vision.num_last_blocks=0",
                                               "model.peft.text.num_last_blocks=0", "model.peft.vision.rank=2",
                                               "model.peft.text.rank=2"]).model.peft)
    except ClipcoreError as exc:
        raise _fail(entry, model_type, "LoRA applies on the model's lora_targets", str(exc)) from None
    model.eval()
    if not all(torch.allclose(a, b, atol=TOLERANCE) for a, b in zip(towers(), base)):
        raise _fail(entry, model_type, "a freshly adapted model equals the base model", "features differ")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    ran: set[str] = set()
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    hooks = [m.register_forward_hook(lambda *_, name=name: ran.add(name)) for name, m in layers.items()]
    try:
        adapted = towers()
    finally:
        for hook in hooks:
            hook.remove()
    skipped = sorted(set(layers) - ran)
    if skipped:
        raise _fail(entry, model_type, "every adapted layer runs in eval mode",
                    f"{len(skipped)} never ran, e.g. {skipped[0]} (its module reads the weight directly, or a fused "
                    "fast path skips it)")
    merge_adapters(model)
    if set(model.state_dict()) != keys or not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(towers(), adapted)):
        raise _fail(entry, model_type, "merged adapters give the base architecture with the adapted outputs",
                    "state-dict keys or features differ after merging")


@per_type
def check_state_dict_round_trip(entry: Entry, model_type: str) -> None:
    """Rule: a state dict saved (weights_only-loadable) and loaded strictly into a fresh model
    reproduces every tensor and the features exactly."""
    source, target = _tiny(entry, model_type, seed=0), _tiny(entry, model_type, seed=1)
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    buffer.seek(0)
    target.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    saved, loaded = source.state_dict(), target.state_dict()
    differ = [k for k in saved if not torch.equal(saved[k], loaded[k])]
    if differ:
        raise _fail(entry, model_type, "state-dict round trip is exact", f"{len(differ)} tensors differ, e.g. {differ[:3]}")
    images, ids = _inputs(source)
    with torch.no_grad():
        if not (torch.equal(source.encode_image(images), target.encode_image(images))
                and torch.equal(source.encode_text(ids), target.encode_text(ids))):
            raise _fail(entry, model_type, "state-dict round trip is exact", "features differ after loading")


@per_type
def check_tokenizer_fixed_length(entry: Entry, model_type: str) -> None:
    """Rule: the tokenizer returns int64 [N, context_length] for empty, very long and non-ASCII
    captions, declares its rules in a TextSpec and saves a Hugging Face tokenizer directory."""
    tokenizer = _tiny(entry, model_type).tokenizer
    if not isinstance(tokenizer, Tokenizer) or not isinstance(tokenizer.spec, TextSpec):
        raise _fail(entry, model_type, "the tokenizer follows core.backbone.Tokenizer with a TextSpec",
                    f"got {type(tokenizer).__name__}")
    ids = tokenizer(ODD_CAPTIONS)
    length = tokenizer.spec.context_length
    if ids.dtype != torch.long or tuple(ids.shape) != (len(ODD_CAPTIONS), length):
        raise _fail(entry, model_type, "token ids are int64 [N, context_length] for any caption",
                    f"got {ids.dtype} {list(ids.shape)}, context_length={length}")
    if not (ids[0] == tokenizer.spec.pad_id).any():
        raise _fail(entry, model_type, "an empty caption is padded with pad_id", f"ids {ids[0].tolist()}")
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        if not (Path(directory) / "tokenizer.json").is_file():
            raise _fail(entry, model_type, "save_pretrained writes a fast-tokenizer directory", "no tokenizer.json")


@per_type
def check_preprocess_matches_input_size(entry: Entry, model_type: str) -> None:
    """Rule: the preprocessing spec is valid and its size is what the image tower takes."""
    model = _tiny(entry, model_type)
    spec = model.preprocess
    if not isinstance(spec, PreprocessSpec) or len(spec.mean) != 3 or len(spec.std) != 3 or min(spec.std) <= 0 \
            or spec.resize_mode not in ("squash", "shortest") or spec.interpolation not in ("bilinear", "bicubic"):
        raise _fail(entry, model_type, "preprocess is a valid core.backbone.PreprocessSpec", repr(spec))
    try:
        with torch.no_grad():
            out = model.encode_image(torch.zeros(1, 3, spec.height, spec.width))
    except Exception as exc:  # the declared size must be accepted
        raise _fail(entry, model_type, "the image tower takes the preprocessing spec's size",
                    f"{spec.height}x{spec.width} raised {type(exc).__name__}: {exc}") from None
    if tuple(out.shape) != (1, model.embed_dim):
        raise _fail(entry, model_type, "the image tower takes the preprocessing spec's size", f"got {list(out.shape)}")


@per_type
def check_logit_parameters(entry: Entry, model_type: str) -> None:
    """Rule: logit_scale is a finite 0-d parameter (log space); logit_bias is one or None; both are
    in the ``other`` parameter group."""
    model = _tiny(entry, model_type)
    other = {id(p) for _, p in model.parameter_groups()["other"]}
    for name in ("logit_scale", "logit_bias"):
        p = getattr(model, name, None)
        if p is None and name == "logit_bias":
            continue
        if not isinstance(p, nn.Parameter) or p.dim() != 0 or not torch.isfinite(p).all() or id(p) not in other:
            raise _fail(entry, model_type, f"{name} is a finite 0-d parameter in the 'other' group",
                        f"got {type(p).__name__} {getattr(p, 'shape', None)}")


@per_type
def check_fsdp_wrap_classes(entry: Entry, model_type: str) -> None:
    """Rule: fsdp_wrap_classes names module classes present in the model and covers every block."""
    model = _tiny(entry, model_type)
    classes = tuple(model.fsdp_wrap_classes)
    if not classes or not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
        raise _fail(entry, model_type, "fsdp_wrap_classes is a non-empty tuple of nn.Module classes", repr(classes))
    present = {type(m) for m in model.modules()}
    absent = [c.__name__ for c in classes if c not in present]
    blocks = list(model.vision_blocks()) + list(model.text_blocks())
    uncovered = [type(b).__name__ for b in blocks if not isinstance(b, classes)]
    if absent or uncovered or not blocks:
        raise _fail(entry, model_type, "FSDP wrap classes are present and cover every transformer block",
                    f"absent: {absent}, blocks not covered: {uncovered[:3]}, blocks: {len(blocks)}")


@per_type
def check_export_flag(entry: Entry, model_type: str) -> None:
    """Rule: export_refusal is None or a reason; every registered exporter refuses such a model
    with that reason, before writing anything."""
    model = _tiny(entry, model_type)
    reason = model.export_refusal
    if reason is None:
        return
    if not isinstance(reason, str) or not reason.strip():
        raise _fail(entry, model_type, "export_refusal is None or a non-empty reason", repr(reason))
    from core.spec.config import ExperimentConfig
    from core.registry import get_registry

    for exporter_entry in get_registry().entries["exporters"].values():
        with tempfile.TemporaryDirectory() as directory:
            cfg = ExperimentConfig()
            cfg.export.onnx_file = str(Path(directory) / f"model{exporter_entry.obj.suffixes[0]}")
            try:
                exporter_entry.obj.export(model, cfg)
            except ClipcoreError as exc:
                if reason not in str(exc):
                    raise _fail(entry, model_type, "exporters refuse with the model's export_refusal",
                                f"{exporter_entry.name!r} said: {exc}") from None
            else:
                raise _fail(entry, model_type, "exporters refuse a model with export_refusal",
                            f"{exporter_entry.name!r} exported it")
            if any(Path(directory).iterdir()):
                raise _fail(entry, model_type, "a refused export writes nothing",
                            f"{exporter_entry.name!r} wrote {[p.name for p in Path(directory).iterdir()]}")


@per_type
def check_forward_outputs(entry: Entry, model_type: str) -> None:
    """Rule: ``forward`` returns open_clip's tuple ``(image, text, scale[, bias])`` and, with
    ``output_dict=True``, a dict of the same tensors."""
    model = _tiny(entry, model_type)
    images, ids = _inputs(model)
    with torch.no_grad():
        found, named = model(images, ids), model(images, ids, output_dict=True)
    keys = ["image_features", "text_features", "logit_scale"] + (["logit_bias"] if model.logit_bias is not None else [])
    if not isinstance(found, tuple) or len(found) != len(keys):
        raise _fail(entry, model_type, "forward returns (image_features, text_features, logit_scale[, logit_bias])",
                    f"got {type(found).__name__} of {len(found) if isinstance(found, tuple) else '?'} items")
    if not all(torch.equal(a, named[k]) for a, k in zip(found, keys)):
        raise _fail(entry, model_type, "forward(output_dict=True) holds the tuple's tensors", f"keys {list(named)}")


def _block_calls(blocks: list[nn.Module]) -> tuple[list[int], list[Any]]:
    calls = [0] * len(blocks)
    hooks = [b.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)) for i, b in enumerate(blocks)]
    return calls, hooks


@per_type
def check_forward_intermediates(entry: Entry, model_type: str) -> None:
    """Rule: ``forward_intermediates`` (open_clip's arguments and keys) returns one output per block
    asked for (all, the last n, or listed indices, negative from the end), NCHW image maps that are
    the NLC tokens reshaped, text tokens ``[B, L, C]``, final features equal to ``encode_*``,
    extra tokens on request, and with ``stop_early`` runs no block after the last one taken."""
    model = _tiny(entry, model_type)
    images, ids = _inputs(model)
    blocks = {"image": list(model.vision_blocks()), "text": list(model.text_blocks())}
    with torch.no_grad():
        try:
            full = model.forward_intermediates(images, ids, output_logits=True, output_logit_scale_bias=True)
        except ClipcoreError as exc:
            raise _fail(entry, model_type, "image_intermediates and text_intermediates are implemented",
                        exc.what) from None
        flat = model.forward_intermediates(images, ids, image_output_fmt="NLC", image_output_extra_tokens=True,
                                           text_output_extra_tokens=True, intermediates_only=True)
        want = {"image": model.encode_image(images, normalize=True), "text": model.encode_text(ids, normalize=True)}
    for tower in ("image", "text"):
        found = full[f"{tower}_intermediates"]
        if len(found) != len(blocks[tower]):
            raise _fail(entry, model_type, f"forward_intermediates gives one {tower} output per block",
                        f"{len(found)} outputs for {len(blocks[tower])} blocks")
        diff = (full[f"{tower}_features"] - want[tower]).abs().max().item()
        if diff > TOLERANCE:
            raise _fail(entry, model_type, f"forward_intermediates' {tower}_features equal encode_{tower}(normalize=True)",
                        f"max abs diff {diff:.2e}")
        if f"{tower}_features" in flat:
            raise _fail(entry, model_type, "intermediates_only returns no final features", f"{tower}_features present")
    for nchw, nlc in zip(full["image_intermediates"], flat["image_intermediates"]):
        if nchw.dim() != 4 or nchw.shape[0] != len(images) or not torch.equal(nchw.flatten(2).transpose(1, 2), nlc):
            raise _fail(entry, model_type, "NCHW image intermediates are the NLC tokens on the patch grid",
                        f"shapes {tuple(nchw.shape)} and {tuple(nlc.shape)}")
    for text in full["text_intermediates"]:
        if text.dim() != 3 or tuple(text.shape[:2]) != tuple(ids.shape):
            raise _fail(entry, model_type, "text intermediates are [B, L, C]", f"got {tuple(text.shape)}")
    for key, prefix in (("image_intermediates_prefix", "image"), ("text_intermediates_suffix", "text")):
        for extra in flat.get(key, []):
            if extra.dim() != 3 or extra.shape[0] != len(images if prefix == "image" else ids):
                raise _fail(entry, model_type, f"{key} holds [B, E, C] extra tokens", f"got {tuple(extra.shape)}")
    logits = model.get_logits(images, ids)[0]
    if (full["image_logits"] - logits).abs().max().item() > 1e-4 or "logit_scale" not in full:
        raise _fail(entry, model_type, "output_logits gives get_logits' logits, with the logit scale", "they differ")
    for tower, inputs in (("image", images), ("text", ids)):
        n = len(blocks[tower])
        kwargs = {"image": inputs} if tower == "image" else {"text": inputs}
        with torch.no_grad():
            last = model.forward_intermediates(**kwargs, **{f"{tower}_indices": 1}, intermediates_only=True)
            listed = model.forward_intermediates(**kwargs, **{f"{tower}_indices": [0, -1]}, intermediates_only=True)
            calls, hooks = _block_calls(blocks[tower])
            early = model.forward_intermediates(**kwargs, **{f"{tower}_indices": [0]}, stop_early=True,
                                                intermediates_only=True)
            for hook in hooks:
                hook.remove()
        got = {"last": last[f"{tower}_intermediates"], "listed": listed[f"{tower}_intermediates"],
               "early": early[f"{tower}_intermediates"]}
        every = full[f"{tower}_intermediates"] if tower == "text" else flat["image_intermediates"]
        if tower == "image":
            got = {k: [t.flatten(2).transpose(1, 2) for t in v] for k, v in got.items()}
        pairs = [(got["last"], [every[-1]]), (got["listed"], [every[0], every[-1]] if n > 1 else [every[0]]),
                 (got["early"], [every[0]])]
        for have, expected in pairs:
            if len(have) != len(expected) or any((a - b).abs().max().item() > TOLERANCE for a, b in zip(have, expected)):
                raise _fail(entry, model_type, f"{tower}_indices select blocks (int: last n; list: those, negative "
                                               "from the end)", f"{len(have)} outputs, or values differ")
        if n > 1 and sum(calls[1:]) != 0:
            raise _fail(entry, model_type, "stop_early runs no block after the last one taken",
                        f"{tower} blocks after block 0 ran {sum(calls[1:])} times")
    try:
        model.forward_intermediates(images, image_indices=len(blocks["image"]) + 1)
    except ClipcoreError:
        pass
    else:
        raise _fail(entry, model_type, "asking for more blocks than the tower has is a ClipcoreError", "nothing raised")


@per_type
def check_lock_options(entry: Entry, model_type: str) -> None:
    """Rule: ``lock_text_tower(freeze_layer_norm=False)`` leaves exactly the text LayerNorms
    trainable; ``lock_image_tower(freeze_bn_stats=...)`` is accepted."""
    model = _tiny(entry, model_type)
    model.lock_image_tower(0, freeze_bn_stats=True)
    model.lock_text_tower(0, freeze_layer_norm=False)
    trainable = [n for n, p in model.text_tower.named_parameters() if p.requires_grad]
    norms = [f"{n}.{k}" if n else k for n, m in model.text_tower.named_modules() if is_layer_norm(m)
             for k, _ in m.named_parameters(recurse=False)]
    if sorted(trainable) != sorted(norms):
        raise _fail(entry, model_type, "freeze_layer_norm=False keeps only the text LayerNorms trainable",
                    f"{len(trainable)} trainable, {len(norms)} LayerNorm parameters")
    if any(p.requires_grad for p in model.vision_tower.parameters()):
        raise _fail(entry, model_type, "lock_image_tower(0) freezes the image tower", "some parameters are trainable")


BACKBONE_CHECKS = [
    check_output_shapes,
    check_normalize_gives_unit_vectors,
    check_single_equals_batched,
    check_eval_is_deterministic,
    check_forward_outputs,
    check_forward_intermediates,
    check_lock_options,
    check_gradients_reach_both_towers,
    check_frozen_towers,
    check_grad_checkpointing_matches,
    check_grad_checkpointing_recomputes,
    check_state_dict_round_trip,
    check_tokenizer_fixed_length,
    check_preprocess_matches_input_size,
    check_logit_parameters,
    check_fsdp_wrap_classes,
    check_export_flag,
    check_export_matches_runtime,
    check_build_from_spec,
    check_tokenizer_reproducible_without_torch,
    check_lora_adapters,
]
