"""``synthetic`` / ``synthetic_fixed``: 64 fixed random (image, caption) pairs; a resumable,
rank-sharded loader; ``synthetic`` flips images with the global torch RNG (as a main-process augmentation would). The environment
variable CLIPCORE_TEST_BATCH_DELAY (seconds) slows every batch down, so a test can kill a run
mid-epoch."""

import os
import time

import torch

from core import DatasetFormat, RetrievalSet, hookimpl

N = 64
# match keys (image, text, group): unique images and texts; pairs i and i + 32 share a group
MATCH_KEYS = torch.stack([torch.arange(N), torch.arange(N) + N, torch.arange(N) % 32], dim=1)


def _pairs(tokenizer, size):
    g = torch.Generator().manual_seed(1234)
    images = torch.randn(N, 3, size, size, generator=g)
    texts = [f"caption number {i} of {N}" for i in range(N)]
    return images, tokenizer(texts), texts


class Loader:
    flip = True

    def __init__(self, request):
        self.request = request
        size = request.config.model.image_size
        self.images, self.ids, _ = _pairs(request.tokenizer, size)
        self.global_batch = request.batch_size * request.world_size
        self.num_samples = (N // self.global_batch) * self.global_batch
        self.epoch, self.pos = 0, 0

    def __len__(self):
        return N // self.global_batch

    def set_epoch(self, epoch):
        self.epoch, self.pos = epoch, 0

    def __iter__(self):
        r = self.request
        order = torch.randperm(N, generator=torch.Generator().manual_seed(r.seed * 1000 + self.epoch))
        while self.pos < len(self):
            start = self.pos * self.global_batch + r.rank * r.batch_size
            idx = order[start:start + r.batch_size]
            self.pos += 1
            time.sleep(float(os.environ.get("CLIPCORE_TEST_BATCH_DELAY", "0")))
            images = self.images[idx]
            if self.flip:
                flip = torch.rand(len(idx)) < 0.5
                images[flip] = images[flip].flip(-1)
            yield {"image": images, "input_ids": self.ids[idx], "key": [str(int(i)) for i in idx],
                   "match_keys": MATCH_KEYS[idx]}

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = state["epoch"], state["pos"]


class FixedLoader(Loader):
    flip = False


def retrieval(request):
    images, _, texts = _pairs(request.tokenizer, request.config.model.image_size)
    return RetrievalSet(image_paths=[f"img{i}" for i in range(N)], captions=texts,
                        caption_image=list(range(N)), load_image=lambda i: images[i])


@hookimpl
def register_dataset_formats(register):
    register(DatasetFormat(name="synthetic", build=Loader, retrieval=retrieval))
    register(DatasetFormat(name="synthetic_fixed", build=FixedLoader, retrieval=retrieval))
