"""Embeddings from any model: the :class:`Encoder` interface that evaluate, inference, search and
validation use, its two adapters (a torch :class:`~core.backbone.ClipModel`, a deployed
:class:`~core.exporter.Runner`), and batched, rank-sharded embedding with an all-gather.

An **encoder** has:

- ``has_vision`` / ``has_text``: which towers it can run;
- ``transform(image)``: one opened ``PIL.Image`` (any mode, maybe not yet decoded:
  :func:`core.images.open_image`) to the per-image input ``encode_images`` takes (a normalised ``[3, H, W]`` tensor for a ClipModel; the image itself for a runner,
  which preprocesses from its sidecar);
- ``tokenizer``: the backbone tokenizer (``None`` for a runner, which tokenises inside);
- ``encode_images(items)`` / ``encode_texts(texts)``: a list of transformed images / strings to
  a float32 CPU tensor ``[len, D]`` with L2-normalised rows;
- ``source``: plain values saying where the weights came from (recorded in output files);
- ``logit_scale`` (the multiplier, ``exp`` of the log-space parameter) and ``logit_bias`` (0 when
  the model has none): how the model turns cosine similarities into logits.

Sharding: with several processes (``world.size > 1``) each rank embeds one contiguous block of
the items, every rank running the same number of batches (FSDP-sharded models need that), and
the blocks are all-gathered in order, so rank 0 scores the whole set once (TAO scores per-rank
shards and averages them, which inflates the numbers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.bad_samples import BadSample
from core.errors import ClipcoreError, DataError
from core.images import IMAGE_EXTENSIONS, decoded_rgb, open_image
from core.runtime.transforms import eval_transform
from core.storage import Storage



class Encoder(Protocol):
    """What evaluate, inference, search and validation need from a model (see the module doc)."""

    has_vision: bool
    has_text: bool
    tokenizer: Any
    source: dict[str, str]
    logit_scale: float
    logit_bias: float

    def transform(self, image: Image.Image) -> Any: ...
    def encode_images(self, items: Sequence[Any]) -> torch.Tensor: ...
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor: ...


class ModelEncoder:
    """A :class:`ClipModel` (or an FSDP/DDP-unwrapped one) as an encoder; the caller places the
    model on ``device`` and in eval mode. Preprocessing follows ``model.preprocess``."""

    has_vision = has_text = True

    def __init__(self, model, device: torch.device | str = "cpu", *, source: dict[str, str] | None = None):
        self.model, self.device = model, torch.device(device)
        self.tokenizer = model.tokenizer
        self.transform = eval_transform(model.preprocess)
        self.source = {"model_type": model.model_type, **(source or {})}
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.logit_bias = 0.0 if model.logit_bias is None else float(model.logit_bias.detach())

    @torch.no_grad()  # not inference_mode: an FSDP-sharded training model is encoded too
    def encode_images(self, items: Sequence[torch.Tensor]) -> torch.Tensor:
        images = torch.stack(list(items)).to(self.device, non_blocking=True)
        return F.normalize(self.model.encode_image(images).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenizer(list(texts)).to(self.device, non_blocking=True)
        return F.normalize(self.model.encode_text(ids).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_image_patches(self, items: Sequence[torch.Tensor], *, block: int, layout: str,
                             norm: bool) -> tuple[torch.Tensor, dict[str, np.ndarray], tuple[int, int]]:
        """Embeddings and, from one forward, block ``block``'s patch features: ``patch_features``
        ``[B, H', W', C]`` (layout NHWC) or ``[B, H'*W', C]`` (NLC), and ``patch_prefix`` ``[B, E, C]``
        (class / register / summary tokens) where the tower has them; and the grid ``(H', W')``."""
        images = torch.stack(list(items)).to(self.device, non_blocking=True)
        out = self.model.forward_intermediates(images, image_indices=[block], normalize_intermediates=norm,
                                               image_output_extra_tokens=True)
        maps = out["image_intermediates"][0].float()
        patches = maps.permute(0, 2, 3, 1) if layout == "NHWC" else maps.flatten(2).transpose(1, 2)
        columns = {"patch_features": patches.cpu().numpy()}
        if "image_intermediates_prefix" in out:
            columns["patch_prefix"] = out["image_intermediates_prefix"][0].float().cpu().numpy()
        return out["image_features"].float().cpu(), columns, tuple(maps.shape[-2:])


class RunnerEncoder:
    """A deployed model (:class:`core.exporter.Runner`) as an encoder."""

    tokenizer = None

    def __init__(self, runner, *, source: dict[str, str]):
        self.runner, self.source = runner, source
        self.has_vision, self.has_text = runner.has_vision, runner.has_text
        self.logit_scale, self.logit_bias = float(runner.logit_scale), float(runner.logit_bias)

    def transform(self, image: Image.Image) -> Image.Image:
        return decoded_rgb(image)

    def encode_images(self, items: Sequence[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner.encode_images(list(items)), dtype=np.float32))

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner.encode_texts(list(texts)), dtype=np.float32))


def open_encoder(cfg, section: str, device: torch.device | str = "cpu") -> Encoder:
    """The encoder ``cfg.<section>`` asks for: its ``onnx_file`` (an installed exporter's runner),
    its ``trt_engine`` (an engine builder's runner), else the model of ``cfg.model`` filled from
    its ``checkpoint``, or with the pretrained weights when the checkpoint is unset."""
    ev = getattr(cfg, section)
    for field, kind in (("onnx_file", "exporters"), ("trt_engine", "engine_builders")):
        path = getattr(ev, field)
        if path is not None:
            return RunnerEncoder(_open_runner(kind, path, f"{section}.{field}"), source={field: str(path)})
    from core.runtime.build import build_model

    model = build_model(cfg, ev.checkpoint, key=f"{section}.checkpoint").to(device).eval()
    source = {"checkpoint": str(ev.checkpoint or ""), "pretrained": str(cfg.model.pretrained)}
    return ModelEncoder(model, device, source=source)


def _open_runner(kind: str, path: str, key: str):
    from core.registry import get_registry

    plugin = get_registry().for_suffix(kind, path, key=key, verb="opens")
    reason = plugin.unavailable() if hasattr(plugin, "unavailable") else None
    if reason:
        raise ClipcoreError(f"{plugin.name} cannot run here: {reason}", where=key,
                            fix="run on a machine that has it, or use another model file")
    return plugin.open_runner(Path(path))


# --------------------------------------------------------------------------- images on disk
def list_images(folder: str | Path, *, key: str) -> list[Path]:
    """Image files under ``folder`` (recursive; ``IMAGE_EXTENSIONS`` in any case), sorted by path."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist", where=key, fix="point it at a folder of images")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_files(folder: str, *, key: str, storage: Storage) -> list[tuple[Path, str]]:
    """The images under ``folder``: a path or a URL (fetched through ``storage``'s cache), of a
    folder or an archive (unpacked there), as ``(local file, name)``. The name is the local path,
    or ``<folder as configured>/<relative path>`` for a URL or an archive."""
    root = storage.folder(folder, key)
    found = list_images(root, key=key)
    if root == Path(folder).expanduser():
        return [(p, str(p)) for p in found]
    return [(p, f"{folder.rstrip('/')}/{p.relative_to(root).as_posix()}") for p in found]


def path_loader(paths: Sequence[str | Path], transform: Callable[[Image.Image], Any], *,
                max_pixels: int) -> Callable[[int], Any]:
    """``load(i)``: image ``i`` of ``paths`` opened (:func:`core.images.open_image`) and
    transformed; an unreadable image raises :class:`core.bad_samples.BadSample`."""
    return _PathLoader(list(paths), transform, max_pixels)


@attrs.frozen
class _PathLoader:
    paths: list
    transform: Callable[[Image.Image], Any]
    max_pixels: int

    def __call__(self, i: int) -> Any:
        return self.transform(open_image(self.paths[i], self.max_pixels))


# --------------------------------------------------------------------------- batched embedding
@attrs.frozen
class ImageBatch:
    """One batch: ``indices`` embedded (rows of ``embeddings``, same order) and ``failed``
    ``(index, reason, detail)`` for items that could not be loaded (``reason`` and ``detail`` of
    the :class:`BadSample`; ``None`` when ``load`` returned ``None``: the data layer recorded it)."""

    indices: list[int]
    embeddings: torch.Tensor
    failed: list[tuple[int, str | None, str | None]]
    columns: dict[str, np.ndarray] = attrs.Factory(dict)  # per-row extras of ``encode`` (patch features)


class _Items(torch.utils.data.Dataset):
    def __init__(self, load: Callable[[int], Any], indices: Sequence[int]):
        self.load, self.indices = load, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, Any, tuple[str, str] | None]:
        i = self.indices[k]
        try:
            return i, self.load(i), None
        except BadSample as bad:  # sent back as plain values: BadSample does not pickle
            return i, None, (bad.reason, bad.detail)


def _as_list(batch: list) -> list:
    return batch


def image_batches(encoder: Encoder, load: Callable[[int], Any], indices: Sequence[int], *,
                  batch_size: int, num_workers: int = 0, progress: Progress | None = None,
                  description: str = "images",
                  encode: Callable[[list], tuple[torch.Tensor, dict[str, np.ndarray]]] | None = None,
                  ) -> Iterator[ImageBatch]:
    """Embed the items ``load(i)`` for ``i`` in ``indices``, in batches, loading with
    ``num_workers`` processes. ``load`` returns the transformed item, or ``None`` / raises
    :class:`BadSample` for an unreadable one (reported in ``failed``, never shifting rows).
    ``encode(items) -> (embeddings, columns)`` replaces ``encoder.encode_images`` when given."""
    encode = encode or (lambda items: (encoder.encode_images(items), {}))
    loader = torch.utils.data.DataLoader(_Items(load, indices), batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=_as_list, persistent_workers=False)
    task = progress.add_task(description, total=len(indices)) if progress is not None else None
    for batch in loader:
        good = [(i, item) for i, item, _ in batch if item is not None]
        failed = [(i, *(bad or (None, None))) for i, item, bad in batch if item is None]
        embeddings, columns = encode([item for _, item in good]) if good else (torch.empty(0, 0), {})
        yield ImageBatch([i for i, _ in good], embeddings, failed, columns)
        if task is not None:
            progress.advance(task, len(batch))


def text_batches(encoder: Encoder, texts: Sequence[str], *, batch_size: int, progress: Progress | None = None,
                 description: str = "texts") -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, embeddings)`` for consecutive batches of ``texts``."""
    task = progress.add_task(description, total=len(texts)) if progress is not None else None
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        yield start, encoder.encode_texts(chunk)
        if task is not None:
            progress.advance(task, len(chunk))


def progress_bar(enabled: bool = True) -> Progress:
    """The rich progress bar used for embedding (on stderr; silent when ``enabled`` is false)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


# --------------------------------------------------------------------------- sharded embedding
@attrs.frozen
class Shard:
    """The contiguous block of ``count`` items that ``rank`` of ``size`` embeds, padded (by
    repeating its last item) to the common length ``per_rank`` so every rank runs as many batches."""

    start: int
    stop: int
    per_rank: int

    @classmethod
    def of(cls, count: int, rank: int, size: int) -> "Shard":
        per_rank = math.ceil(count / size) if count else 0
        start = min(rank * per_rank, count)
        return cls(start, min(start + per_rank, count), per_rank)

    def padded_indices(self) -> list[int]:
        own = list(range(self.start, self.stop))
        if not own:  # a rank past the end repeats item 0 so that its batches still run
            return [0] * self.per_rank
        return own + [own[-1]] * (self.per_rank - len(own))


def embed_images(encoder: Encoder, load: Callable[[int], Any], count: int, *, world, batch_size: int,
                 num_workers: int = 0, progress: Progress | None = None, description: str = "images",
                 on_failure: Callable[[int, str, str], None] | None = None) -> tuple[torch.Tensor, np.ndarray] | None:
    """All ``count`` image embeddings ``[count, D]`` and a bool mask of the loaded ones, on rank 0
    (``None`` on the other ranks). Rows of unloaded images are zero; each rank calls
    ``on_failure(index, reason, detail)`` for the images of its block that ``load`` rejected."""
    shard = Shard.of(count, world.rank, world.size)
    rows: dict[int, torch.Tensor] = {}
    failed: dict[int, tuple[str, str]] = {}
    for batch in image_batches(encoder, load, shard.padded_indices(), batch_size=batch_size,
                               num_workers=num_workers, progress=progress, description=description):
        rows.update(zip(batch.indices, batch.embeddings))
        failed.update((index, (reason, detail)) for index, reason, detail in batch.failed if reason is not None)
    for index, (reason, detail) in sorted(failed.items()):
        if on_failure is not None and shard.start <= index < shard.stop:
            on_failure(index, reason, detail)
    dim = _common_dim(next(iter(rows.values())).numel() if rows else 0, world)
    local = torch.zeros(shard.per_rank, dim)
    ok = torch.zeros(shard.per_rank, dtype=torch.uint8)  # uint8: gloo gathers no bools
    for i in range(shard.start, shard.stop):
        if i in rows:
            local[i - shard.start], ok[i - shard.start] = rows[i], 1
    embeddings, mask = _gather_rows(local, world, count), _gather_rows(ok, world, count)
    return None if embeddings is None else (embeddings, mask.numpy().astype(bool))


def embed_texts(encoder: Encoder, texts: Sequence[str], *, world, batch_size: int,
                progress: Progress | None = None, description: str = "texts") -> torch.Tensor | None:
    """All text embeddings ``[len(texts), D]`` on rank 0 (``None`` on the other ranks)."""
    shard = Shard.of(len(texts), world.rank, world.size)
    mine = [texts[i] for i in shard.padded_indices()]
    parts = [emb for _, emb in text_batches(encoder, mine, batch_size=batch_size, progress=progress,
                                            description=description)]
    local = torch.cat(parts) if parts else torch.zeros(0, _common_dim(0, world))
    return _gather_rows(local, world, len(texts))


def _common_dim(dim: int, world) -> int:
    """The embedding width, agreed over ranks (a rank whose items all failed knows none)."""
    if world.size == 1:
        return dim
    t = torch.tensor([dim], device=world.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())


def _gather_rows(local: torch.Tensor, world, count: int) -> torch.Tensor | None:
    """Concatenate every rank's equal-length block in rank order, keep ``count`` rows, on rank 0."""
    if world.size == 1:
        return local[:count]
    device = world.device
    parts = [torch.empty_like(local, device=device) for _ in range(world.size)]
    torch.distributed.all_gather(parts, local.to(device))
    if world.rank != 0:
        return None
    return torch.cat([p.cpu() for p in parts])[:count]
