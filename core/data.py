"""The dataset-format contract: what ``register_dataset_formats`` registers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Protocol, Sequence

import attrs
import torch
from attrs import field

from core.bad_samples import BadSampleLog
from core.backbone import Tokenizer
from core.fields import opt

if TYPE_CHECKING:  # the spec is built on this contract, not the other way round
    from core.spec.config import ExperimentConfig


@attrs.define(kw_only=True, slots=True)
class DatasetEntry:
    """One ``[[dataset.train.datasets]]`` / ``[[dataset.val.datasets]]`` table (TAO's fields)."""

    image_dir: str = field(metadata={"help": "Folder (or .tar/.tar.gz) of images, searched recursively."})
    image_list_file: str | None = opt(None, "File listing images relative to image_dir, one per line.")
    caption_dir: str | None = opt(None, "Folder (or .tar/.tar.gz) of captions; unset: beside the images.")
    caption_file_suffix: str = opt(".txt", "Caption file = <image stem><suffix>.")
    caption_mode: Literal["file", "lines"] = opt(
        "file", "file: the whole file is one caption; lines: each non-empty line is a caption.")
    group_file: str | None = opt(
        None, "CSV of `image,group` lines (image relative to image_dir): images of one group are compatible "
              "positives in training (train.compatible_positives).")


@attrs.frozen(kw_only=True)
class DataRequest:
    """Everything a format needs to build a loader for one rank.

    ``transform`` turns a PIL image into the model's input tensor (train augmentation or eval
    transform, built from the backbone's preprocessing spec); ``tokenizer`` is the backbone's.
    ``bad_samples`` records skipped samples (``record(path, reason)``) and enforces
    ``dataset.on_bad_sample``.
    """

    config: ExperimentConfig
    transform: Callable[[Any], torch.Tensor]
    tokenizer: Tokenizer
    batch_size: int
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    num_workers: int = 0
    bad_samples: BadSampleLog | None = None
    results_dir: str | None = None


class BatchLoader(Protocol):
    """An epoch-aware, resumable iterable of batches for one rank.

    A batch is a dict: ``image`` float ``[B, 3, H, W]``, ``input_ids`` int64 ``[B, L]``, ``key``
    list of ``B`` sample keys, and ``match_keys`` int64 ``[B, 3]`` (what makes pairs compatible
    positives; :func:`core.batching.finish_batch` fills it; a loader without it gets none). ``len()`` is the number of batches this rank yields per epoch (the
    same on every rank; ``drop_last``); ``num_samples`` the samples per epoch over all ranks.
    Order depends only on (seed, epoch): ``set_epoch`` before iterating. ``state_dict()`` taken
    after k batches and restored with ``load_state_dict`` makes the next iteration continue at
    batch k of the same epoch.
    """

    num_samples: int

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[dict[str, Any]]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@attrs.frozen(kw_only=True)
class RetrievalSet:
    """An evaluation set: images, captions, and which image each caption describes.

    ``image_paths[i]`` is image ``i``; ``captions[j]`` describes image ``caption_image[j]`` (an
    image may have several captions). ``load_image(i)`` returns the transformed image tensor or
    ``None`` for an unreadable image (recorded as a bad sample).
    """

    image_paths: Sequence[str]
    captions: Sequence[str]
    caption_image: Sequence[int]
    load_image: Callable[[int], torch.Tensor | None]


@attrs.frozen(kw_only=True)
class RawSample:
    """One sample as files hold it, for :attr:`DatasetFormat.write`: ``image`` is the image
    file's bytes (``image_suffix`` its extension, e.g. ``.png``) and ``caption`` the caption
    file's bytes (UTF-8 text, one caption per line). Bytes, not decoded objects, so tests can
    write corrupt samples too."""

    key: str
    image: bytes
    caption: bytes
    image_suffix: str = ".png"


@attrs.frozen(kw_only=True)
class DatasetFormat:
    """A dataset format, selected by ``dataset.train.type`` / ``dataset.val.type``.

    - ``name``: the format's name; unique across plugins.
    - ``build(request) -> BatchLoader``: the training loader for one rank (see :class:`BatchLoader`).
    - ``retrieval(request) -> RetrievalSet``: optional; the validation/evaluation set built from
      ``dataset.val``. Formats without it cannot be used for validation.
    - ``write(folder, samples, config)``: writes :class:`RawSample` s in this format under
      ``folder`` and points ``config.dataset.train`` (and ``dataset.val`` when the format has
      ``retrieval``; its own sections in ``config.plugins``) at them with absolute paths, each
      caption line read as one caption, returning the config. ``core demo-data`` and the conformance kit
      (:mod:`core.testing.data_checks`) use it; the kit cannot check a format without it.
    - ``config_sections``: plugin-owned config tables (:class:`core.registry.ConfigSection`).
    - ``check(cfg)``: optional rules for ``dataset.train`` when this format reads it (run up front by
      ``core validate`` and every action); raise :class:`core.errors.ConfigError` naming the key and
      the fix. Path fields of its sections (``opt(..., path="dir")``) are checked by core.
    """

    name: str
    build: Callable[[DataRequest], BatchLoader]
    retrieval: Callable[[DataRequest], RetrievalSet] | None = None
    write: Callable[[Any, Sequence[RawSample], Any], Any] | None = None
    description: str = ""
    config_sections: tuple[Any, ...] = ()
    check: Callable[[Any], None] | None = None
