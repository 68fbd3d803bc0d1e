"""WebDataset training input at training speed: clipcore's WDS loader against open_clip's own
WDS pipeline (``open_clip_train.data.get_wds_dataset``), same shards, one run.

    .venv/bin/python bench/bench_wds.py                  # 8 shards x 100 photos, 2 workers, 5 rounds
    .venv/bin/python bench/bench_wds.py --workers 1

Shards: ``--shards`` × ``--per-shard`` photo-like 1024x768 JPEGs (``bench_decode.photo``, about
200 KB each) with a caption, written once under ``--work``. Each round reads one epoch of them as
training batches of 32 at 224x224 through

- clipcore: the ``wds`` dataset-format plugin's loader (``dataset.train.type = "wds"``) with
  ``core.runtime.transforms.train_transform``, as ``core train`` builds it;
- open_clip: ``get_wds_dataset(is_train=True)`` with ``open_clip.transform.image_transform
  (is_train=True)`` and open_clip's tokenizer, as ``open_clip_train`` builds it,

with the same augmentation (RandomResizedCrop scale 0.4-1.0, no colour jitter), OpenAI CLIP's
mean/std, ``--workers`` loader processes each and torch limited to one thread per worker. The
figure is images/s over the epoch (batches consumed as fast as they come: the loader is the only
work), median over alternating rounds, with the per-round clipcore/open_clip ratio.
open_clip_train needs pandas (``pip install -e ".[bench]"``). open_clip_train 3.3.0's
``group_by_keys_nothrow`` fails on the end-of-shard marker (``{}``) that webdataset 1.0's
``tar_file_expander`` yields; the bench gives open_clip the expander with ``eof_value=None`` (what
webdataset 0.2 did), nothing else changed.
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import protocol
import torch
from bench_decode import MEAN, STD, photo

BATCH, SIZE, SCALE = 32, 224, (0.4, 1.0)


def write_shards(folder: Path, shards: int, per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for s in range(shards):
        path = folder / f"shard-{s:06d}.tar"
        paths.append(path)
        if path.is_file():
            continue
        partial = path.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            for i in range(per_shard):
                key = f"{s:06d}{i:04d}"
                for suffix, data in ((".jpg", photo(rng, 1024, 768)), (".txt", f"a photo number {i}".encode())):
                    info = tarfile.TarInfo(key + suffix)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        partial.rename(path)
    return paths


def clipcore_epoch(folder: Path, count: int, workers: int):
    from core.backbone import PreprocessSpec
    from core.data import DataRequest
    from core.registry import get_registry
    from core.runtime.transforms import train_transform
    from core.spec.load import load_config
    from core.testing.data_checks import ByteTokenizer

    cfg = load_config(None, ["dataset.train.type=wds", f"dataset.train.wds.root_dir={folder}",
                             f"dataset.train.wds.samples_per_shard={count // len(list(folder.glob('*.tar')))}",
                             "dataset.augmentation.color_jitter=[]", "dataset.augmentation.grayscale=0",
                             f"dataset.augmentation.scale=[{SCALE[0]}, {SCALE[1]}]"])
    spec = PreprocessSpec(height=SIZE, width=SIZE, mean=MEAN, std=STD, resize_mode="shortest", interpolation="bicubic")
    request = DataRequest(config=cfg, transform=train_transform(spec, cfg.dataset.augmentation),
                          tokenizer=ByteTokenizer(), batch_size=BATCH, num_workers=workers)
    loader = get_registry().get("dataset_formats", "wds", key="bench").build(request)
    epochs = iter(range(1 << 30))

    def one_round() -> dict[str, float]:
        loader.set_epoch(next(epochs))
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch["image"])
        return {"rate": seen / (time.perf_counter() - start)}
    return one_round


def open_clip_epoch(folder: Path, count: int, workers: int):
    import functools

    import open_clip
    import open_clip_train.data as oc_data
    from open_clip.transform import AugmentationCfg, image_transform
    from open_clip_train.data import get_wds_dataset
    from webdataset.tariterators import tar_file_expander

    oc_data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)  # see the module doc

    shards = sorted(folder.glob("*.tar"))
    args = SimpleNamespace(train_data=f"{folder}/shard-{{000000..{len(shards) - 1:06d}}}.tar", train_num_samples=count,
                           batch_size=BATCH, workers=workers, world_size=1, seed=0, dataset_resampled=False,
                           train_data_upsampling_factors=None)
    preprocess = image_transform(SIZE, is_train=True, mean=MEAN, std=STD, aug_cfg=AugmentationCfg(scale=SCALE))
    data = get_wds_dataset(args, preprocess, is_train=True, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    epochs = iter(range(1 << 30))

    def one_round() -> dict[str, float]:
        data.set_epoch(next(epochs))
        start, seen = time.perf_counter(), 0
        for images, _ in data.dataloader:
            seen += len(images)
        return {"rate": seen / (time.perf_counter() - start)}
    return one_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-wds"), help="folder of the shards")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)
    torch.set_num_threads(1)
    folder = args.work / "shards"
    count = args.shards * args.per_shard
    write_shards(folder, args.shards, args.per_shard)
    variants = {"clipcore": clipcore_epoch(folder, count, args.workers),
                "open_clip": open_clip_epoch(folder, count, args.workers)}
    for warm_up in variants.values():
        warm_up()
    rounds.run(variants)
    print(f"WDS training input: {count} photos (1024x768 JPEG) in {args.shards} shards -> batches of {BATCH} at "
          f"{SIZE}x{SIZE}, crop scale {SCALE[0]}-{SCALE[1]}, {args.workers} loader workers")
    print(f"  clipcore {rounds.median('clipcore', 'rate'):.1f} images/s, open_clip "
          f"{rounds.median('open_clip', 'rate'):.1f} images/s: clipcore/open_clip "
          f"{rounds.ratio('clipcore', 'open_clip', 'rate')}")
    print(rounds.footer())


if __name__ == "__main__":
    main()
