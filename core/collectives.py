"""Collectives with autograd, for losses that see the global batch (part of the plugin API).

Every rank must call these with tensors of the same shape (equal local batch sizes: the data
loaders yield full batches only). Gradients travel back to the rank that owns the input, summed
over every rank that used it, so a rank's input gradient is ∂(Σ_ranks loss_r)/∂(its input).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's ``[B, D]`` tensor into ``[W·B, D]``; backward sums the gradient
    over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.size = rank, size
        out = tensor.new_empty((size * tensor.shape[0], *tensor.shape[1:]))
        dist.all_gather_single(out, tensor.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.GLOO:  # gloo has no reduce-scatter
            dist.all_reduce(grad)
            return grad.chunk(ctx.size)[ctx.rank]
        out = grad.new_empty((grad.shape[0] // ctx.size, *grad.shape[1:]))
        dist.reduce_scatter_single(out, grad)
        return out


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated in rank order, differentiable (see module docstring);
    ``tensor`` itself on one process."""
    return tensor if world()[1] == 1 else _AllGather.apply(tensor)


def _send_receive(tensors: Sequence[torch.Tensor], routes: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
    """For each tensor and ``(dst, src)`` route: send it to ``dst``, receive a same-shaped one from ``src``."""
    received = [torch.empty_like(t) for t in tensors]
    ops = []
    for tensor, buffer, (dst, src) in zip(tensors, received, routes):
        ops.append(dist.P2POp(dist.isend, tensor.contiguous(), dst))
        ops.append(dist.P2POp(dist.irecv, buffer, src))
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return tuple(received)


class _Exchange(torch.autograd.Function):
    """Point-to-point exchange along ``routes``; backward sends each gradient back the reverse way."""

    @staticmethod
    def forward(ctx, routes: tuple[tuple[int, int], ...], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.routes = routes
        return _send_receive(tensors, routes)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        reverse = tuple((src, dst) for dst, src in ctx.routes)
        return (None, *_send_receive(grads, reverse))


def exchange_with_grad(routes: Sequence[tuple[int, int]], *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Send ``tensors[i]`` to rank ``routes[i][0]`` and receive its counterpart from ``routes[i][1]``,
    all at once, differentiable: the gradient of what was received goes back to its sender."""
    return _Exchange.apply(tuple(routes), *tensors)


def ring_neighbours(tensor: torch.Tensor):
    """Yield, one by one, ``(source rank, its tensor)`` for every other rank (not this rank's own)
    by passing ``tensor`` around the ring in both directions: ⌊(W−1)/2⌋ rounds that receive from
    both neighbours, plus one one-way hop when W−1 is odd. At most two received blocks are alive
    per round."""
    rank, size = world()
    left, right = (rank - 1) % size, (rank + 1) % size
    to_left = to_right = tensor
    rounds, one_way = divmod(size - 1, 2)
    for hop in range(1, rounds + 1):
        from_right, from_left = exchange_with_grad(((left, right), (right, left)), to_left, to_right)
        yield (rank + hop) % size, from_right
        yield (rank - hop) % size, from_left
        to_left, to_right = from_right, from_left
    if one_way:
        (from_left,) = exchange_with_grad(((right, left),), to_right)
        yield (rank - rounds - 1) % size, from_left
