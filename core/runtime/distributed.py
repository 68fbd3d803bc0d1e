"""Process groups, model wrapping (DDP / FSDP2) and the torchrun launch line for training.

One process per GPU (NCCL) or, without CUDA, per CPU worker (gloo), started by torchrun; the
world size must equal ``train.num_gpus × train.num_nodes``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
from typing import Any, Sequence

import attrs
import torch
import torch.distributed as dist
from torch import nn

from core.errors import ConfigError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@attrs.frozen
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its node, its device."""

    rank: int
    size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def expected_world_size(section_cfg: Any) -> int:
    """``num_gpus`` × ``num_nodes`` (sections without ``num_nodes`` run on one node)."""
    return section_cfg.num_gpus * getattr(section_cfg, "num_nodes", 1)


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def init_world(section_cfg: Any, section: str = "train") -> World:
    """Join the process group torchrun set up (NCCL on GPU, gloo on CPU), or run as one process.

    ``section_cfg`` is the action's config section (``train``, ``evaluate``, ``inference``): its
    ``num_gpus`` (× ``num_nodes`` where it has one) must equal torchrun's world size, else a
    :class:`ConfigError` names both; ``gpu_ids`` pick the devices.
    """
    nodes, expected = getattr(section_cfg, "num_nodes", 1), expected_world_size(section_cfg)
    asked = (f"{section}.num_gpus × {section}.num_nodes = {section_cfg.num_gpus} × {nodes}"
             if hasattr(section_cfg, "num_nodes") else f"{section}.num_gpus")
    if not under_torchrun():
        if expected > 1:
            raise ConfigError(
                f"{asked} = {expected} processes, but this process was not started by torchrun",
                where=f"{section}.num_gpus", fix=f"run `core {section} -c spec.toml` (it launches torchrun), or "
                f"`torchrun --nproc_per_node {section_cfg.num_gpus} --nnodes {nodes} -m core.{section} ...`")
        return World(0, 1, 0, _device(0, section_cfg))
    rank, size, local_rank = (int(os.environ[name]) for name in TORCHRUN_ENV)
    die_with_parent()  # a worker never outlives torchrun, even when torchrun is killed outright
    if size != expected:
        raise ConfigError(
            f"torchrun started WORLD_SIZE={size} processes, but the config asks for {asked} = {expected}",
            where=f"{section}.num_gpus" + (f" / {section}.num_nodes" if hasattr(section_cfg, "num_nodes") else ""),
            fix=f"match torchrun's process count ({size}) in the config (-g {size}), "
                f"or start torchrun with {expected} processes in total")
    device = _device(local_rank, section_cfg)
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store, _, _ = next(dist.rendezvous("env://"))
        # keys of this torchrun attempt only: after a restart (--max-restarts) the store still holds
        # the dead workers' addresses, which gloo would otherwise try to connect to
        store = dist.PrefixStore(f"clipcore/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=size,
                                device_id=device if device.type == "cuda" else None)
    return World(rank, size, local_rank, device)


def _device(local_rank: int, section_cfg: Any) -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    ids = list(section_cfg.gpu_ids)
    index = ids[local_rank] if len(ids) > local_rank and not os.environ.get("CUDA_VISIBLE_DEVICES") else local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def close_world() -> None:
    """Leave the process group, and free what still refers to it (sharded modules, pending work)
    while the runtime is whole: left to interpreter shutdown, gloo's threads were sometimes destroyed
    unjoined ("terminate called without an active exception", SIGABRT at exit)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


# --------------------------------------------------------------------------- wrapping
def wrap_model(model: nn.Module, strategy: str, world: World) -> nn.Module:
    """The model the training step calls: ``model`` itself for one process, else DDP or FSDP2.

    FSDP2 shards every module of a class in ``model.fsdp_wrap_classes`` as its own unit (innermost
    first), then the root. 0-d parameters (logit scale/bias) cannot be sharded: they stay
    replicated and :func:`sync_replicated_grads` averages their gradients. ``encode_image`` /
    ``encode_text`` are registered as forward methods so evaluation works on the sharded model.
    Frozen parameters are simply not trained under both strategies.
    """
    if not world.distributed:
        return model
    if strategy == "ddp":
        device_ids = [world.device.index] if world.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        units = tuple(getattr(model, "fsdp_wrap_classes", ()))
        for module in reversed(list(model.modules())):
            if units and isinstance(module, units) and module is not model:
                fully_shard(module)
        fully_shard(model, ignored_params=set(replicated_params(model)))
        for method in ("encode_image", "encode_text"):
            register_fsdp_forward_method(model, method)
        return model
    raise ConfigError(f"unknown distributed strategy {strategy!r}", where="train.distributed_strategy",
                      fix="use ddp or fsdp")


def replicated_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters FSDP leaves unsharded (0-d: logit scale and bias)."""
    return [p for p in model.parameters() if p.ndim == 0]


def sync_replicated_grads(model: nn.Module, strategy: str, world: World) -> None:
    """Average the gradients FSDP does not reduce (call after the last backward of a step)."""
    if not (world.distributed and strategy == "fsdp"):
        return
    for p in replicated_params(unwrap(model)):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world.size)


def unwrap(model: nn.Module) -> nn.Module:
    """The ClipModel under a DDP wrapper (FSDP2 shards in place, so it is the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_ranks(obj: Any, world: World) -> list[Any]:
    """``obj`` from every rank, in rank order (``[obj]`` for one process)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool, world: World) -> bool:
    """True when ``flag`` holds on every rank (a collective: every rank must call it)."""
    if not world.distributed:
        return flag
    t = torch.tensor([0 if flag else 1], device=world.device)
    dist.all_reduce(t)
    return int(t.item()) == 0


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar tensor over ranks."""
    if not world.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world.size


# --------------------------------------------------------------------------- launching
def torchrun_command(section_cfg: Any, worker: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run ... <worker>`` for ``num_gpus`` processes per node on
    ``num_nodes`` nodes (sections without ``num_nodes`` run on one), restarting all workers up to
    ``max_restarts`` times after a failure; ``worker`` is the tail that each process runs
    (``-m core.train --config ...``).

    Several nodes meet through torchrun's c10d rendezvous at ``MASTER_ADDR:MASTER_PORT`` (node 0's
    address, required; port default 29500), under the job id ``RDZV_ID`` (default ``clipcore``:
    set it per job when jobs share an endpoint). A node waits at most ``rdzv_timeout`` seconds for
    the others. Node ranks are assigned by the rendezvous.
    """
    nodes = getattr(section_cfg, "num_nodes", 1)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={section_cfg.num_gpus}",
           f"--nnodes={nodes}", f"--max-restarts={getattr(section_cfg, 'max_restarts', 0)}"]
    if nodes > 1:
        if "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                f"train.num_nodes = {nodes} needs MASTER_ADDR (the address of node 0) in the environment",
                where="train.num_nodes",
                fix="export MASTER_ADDR=<node 0 host> MASTER_PORT=29500 (and RDZV_ID=<job id>) on every node, "
                    "then run the same `core train` command on each (examples/slurm and examples/kubernetes "
                    "do this)")
        endpoint = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}"
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={os.environ.get('RDZV_ID', 'clipcore')}",
                f"--rdzv-conf=join_timeout={section_cfg.rdzv_timeout}"]
    else:
        cmd += ["--standalone"]
    return cmd + list(worker)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies, however the parent dies (SIGKILL
    included), so no worker outlives its launcher. A no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_torchrun(cmd: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run a torchrun command line and return its exit status.

    torchrun ends with this process: SIGINT / SIGTERM here are passed on as SIGTERM (torchrun then
    stops its workers) and raise :class:`KeyboardInterrupt` once it has exited; if this process is
    killed outright, torchrun gets SIGTERM from the kernel (:func:`die_with_parent`), and the
    workers, which ask the same of torchrun, follow.
    """
    proc = subprocess.Popen(list(cmd), env=env, preexec_fn=die_with_parent)
    stopped: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped:
        raise KeyboardInterrupt
    return status
