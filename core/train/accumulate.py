"""Exact gradient accumulation for contrastive losses (open_clip's ``--accum-freq``, GradCache-style).

A contrastive loss couples every pair of the batch, so summing the losses of k micro-batches is
not the loss of their union. :func:`accumulated_step` makes k micro-batches of ``B`` pairs
behave exactly like one batch of ``k·B`` pairs (same loss, same gradients) while holding the
activations of only one micro-batch at a time:

1. every micro-batch is encoded without grad and its features are cached;
2. every micro-batch is encoded again with grad; its fresh features replace its cached ones in
   the full ``k·B`` feature set, the loss of that set is backpropagated, and only this
   micro-batch's activations receive gradient. Summed over the k passes this is the full gradient.

The logit scale and bias take part in the graph in the last pass only, so their gradient is
counted once (open_clip counts it k times). Pass 2 replays each micro-batch's RNG state from
pass 1, so dropout and other random layers give the same features twice. Gradient sync of a
DDP (``no_sync``) or FSDP2 (``set_requires_gradient_sync``) model happens in the last pass only.
Cost: two forwards per sample. Layers that mix samples across the batch (BatchNorm) break
exactness, as they would any accumulation.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import torch
from torch import nn

from core.train.rng import preserved_rng, rng_state, set_rng_state

Batch = Mapping[str, Any]
FEATURES = ("image_features", "text_features")


def accumulated_step(model: nn.Module, loss_fn: Callable[..., torch.Tensor], micro_batches: Sequence[Batch],
                     *, backward: bool | Callable[[torch.Tensor], None] = True,
                     autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> torch.Tensor:
    """Loss (detached) of the union of ``micro_batches``; with ``backward``, accumulate its exact
    gradients into ``.grad`` (the caller zeroes them before and steps the optimizer after).

    ``model(image, input_ids, output_dict=True)`` returns the :class:`core.backbone.ClipModel` forward dict
    (``image_features``, ``text_features``, ``logit_scale``, ``logit_bias``); each micro-batch is a
    batch dict with ``image``, ``input_ids`` and optionally ``match_keys`` (passed on to the loss,
    concatenated like the features), all of the same size. ``loss_fn`` is a loss
    module as specified by :class:`core.loss.LossSpec`: backpropagate its value as is (no division
    by k). ``backward`` is ``True`` (``loss.backward()``), ``False`` (no backward), or a callable
    doing it (``lambda loss: scaler.scale(loss).backward()``). ``autocast`` wraps forwards and loss.
    """
    do_backward = (lambda loss: loss.backward()) if backward is True else backward or None
    keys = _match_keys(micro_batches)
    if len(micro_batches) == 1 and do_backward is not None:
        with autocast():
            out = _encode(model, micro_batches[0])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"],
                           match_keys=keys)
        do_backward(loss)
        return loss.detach()

    cached: dict[str, list[torch.Tensor]] = {key: [] for key in FEATURES}
    rng_states = []
    with torch.no_grad():
        for batch in micro_batches:
            rng_states.append(rng_state())
            with autocast():
                out = _encode(model, batch)
            for key in FEATURES:
                cached[key].append(out[key])
        if do_backward is None:
            with autocast():
                return loss_fn(*(torch.cat(cached[key]) for key in FEATURES), out["logit_scale"], out["logit_bias"],
                               match_keys=keys)

    last = len(micro_batches) - 1
    with preserved_rng():  # leave the streams as pass 1 left them
        for index, (batch, rng) in enumerate(zip(micro_batches, rng_states)):
            set_rng_state(rng)
            with _gradient_sync(model, enabled=index == last):
                with autocast():
                    out = _encode(model, batch)
                    features = [torch.cat([*cached[key][:index], out[key], *cached[key][index + 1:]])
                                for key in FEATURES]
                    scale, bias = out["logit_scale"], out["logit_bias"]
                    if index != last:
                        scale, bias = scale.detach(), None if bias is None else bias.detach()
                    loss = loss_fn(*features, scale, bias, match_keys=keys)
                do_backward(loss)
    return loss.detach()


def _match_keys(micro_batches: Sequence[Batch]) -> torch.Tensor | None:
    keys = [batch.get("match_keys") for batch in micro_batches]
    return None if any(k is None for k in keys) else torch.cat(keys)


def _encode(model: nn.Module, batch: Batch) -> dict[str, Any]:
    return model(batch["image"], batch["input_ids"], output_dict=True)


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, *, enabled: bool) -> Iterator[None]:
    """Suspend cross-rank gradient reduction of a DDP or FSDP2 model unless ``enabled``."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
