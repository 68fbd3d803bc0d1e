"""Helpers for the training tests: a synthetic dataset format and test losses installed as a real
plugin distribution (so torchrun workers and killed-and-resumed subprocesses find them through
the entry-point group), and small training configs on the ``example-tiny`` backbone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import attrs

from core.spec.config import DatasetEntry, ExperimentConfig
from tests.plugin_factory import make_distribution

SYNTHETIC = '''
"""``synthetic`` / ``synthetic_fixed``: 64 fixed random (image, caption) pairs; a resumable,
rank-sharded loader; ``synthetic`` flips images with the global torch RNG (as a main-process augmentation would). The environment
variable CLIPCORE_TEST_BATCH_DELAY (seconds) slows every batch down, so a test can kill a run
mid-epoch."""

import os
import time

import torch

from core import hookimpl
from core.data import DatasetFormat, RetrievalSet

N = 64


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
            yield {"image": images, "input_ids": self.ids[idx], "key": [str(int(i)) for i in idx]}

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
'''

NAN_LOSS = '''
"""``nan_after``: a CLIP-style loss that returns NaN from the 4th call on (fault injection)."""

import torch
import torch.nn.functional as F
from torch import nn

from core import hookimpl
from core.loss import LossSpec


class NanAfter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, image, text, scale, bias):
        self.calls += 1
        logits = scale * image @ text.T
        labels = torch.arange(len(image))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        if bias is not None:
            loss = loss + 0 * bias
        return loss * float("nan") if self.calls >= 4 else loss


@hookimpl
def register_losses(register):
    register(LossSpec(name="nan_after", build=lambda cfg: NanAfter(), init_logit_scale=2.0,
                      init_logit_bias=-1.0))
'''


def install_test_plugins(root: Path) -> Path:
    """Install the test plugins as a distribution under ``root`` and make this process see it."""
    path = make_distribution(root, "clipcore-train-test-plugins", "1.0",
                             {"synthetic_data": SYNTHETIC, "nan_loss": NAN_LOSS})
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from core.registry import get_registry

    get_registry.cache_clear()
    return path


PLUGINS = "example_backbone,siglip_loss,clip_loss,synthetic_data,nan_loss"


def subprocess_env(plugin_root: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess that sees the test plugins (and only the plugins it needs,
    so it starts fast), on one thread."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_root), repo, env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CLIPCORE_PLUGINS=PLUGINS, **extra)
    return env


def tiny_config(results_dir: Path, *, validate: bool = False, **train_overrides) -> ExperimentConfig:
    """A 2-epoch run of ``example-tiny`` on the synthetic data (4 steps per epoch at batch 16),
    validated on the same 64 pairs with ``validate``."""
    cfg = ExperimentConfig()
    val = attrs.evolve(cfg.dataset.val, type="synthetic", batch_size=32, num_workers=0,
                       datasets=[DatasetEntry(image_dir="synthetic")] if validate else [])
    cfg = attrs.evolve(
        cfg, results_dir=str(results_dir),
        model=attrs.evolve(cfg.model, type="example-tiny", pretrained=False, image_size=32),
        dataset=attrs.evolve(cfg.dataset, val=val, train=attrs.evolve(cfg.dataset.train, type="synthetic",
                                                                      batch_size=16, num_workers=0)))
    train = dict(num_epochs=2, loss_type="siglip", precision="fp32", log_every_n_steps=1,
                 optim=attrs.evolve(cfg.train.optim, warmup_steps=2, vision_lr=1e-3, text_lr=1e-3))
    train.update(train_overrides)
    return attrs.evolve(cfg, train=attrs.evolve(cfg.train, **train))


TOML = """
results_dir = "{results_dir}"

[model]
type = "example-tiny"
pretrained = false
image_size = 32

[train]
num_epochs = 2
loss_type = "siglip"
precision = "fp32"
log_every_n_steps = 1

[train.optim]
warmup_steps = 2
vision_lr = 1e-3
text_lr = 1e-3

[dataset.train]
type = "synthetic"
batch_size = 16
num_workers = 0

[[dataset.train.datasets]]
image_dir = "{data_dir}"
"""


def write_tiny_spec(path: Path, results_dir: Path) -> Path:
    """The TOML twin of :func:`tiny_config` (the synthetic format ignores its image_dir)."""
    path.write_text(TOML.format(results_dir=results_dir, data_dir=path.parent))
    return path
