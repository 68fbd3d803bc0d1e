"""Helpers for the evaluate / inference / search tests: a backbone whose embeddings are known
exactly (``color-clip``), installed as a real plugin distribution, and small image folders.

``color-clip`` embeds an image as its mean normalised RGB (a pure red image is ``(1, -1, -1)``)
and a text as the RGB vector of the first colour word it contains, so a caption or class name
matches exactly the images of its colour and every score is known in advance.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image

from tests.plugin_factory import make_distribution

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
          "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0)}

COLOR_CLIP = '''
"""``color-clip``: image = mean normalised RGB, text = RGB vector of its first colour word."""

import torch
from torch import nn

from core import hookimpl
from core.backbone import BackboneFamily, ClipModel, PreprocessSpec, TextSpec

COLORS = {colors!r}
WORDS = list(COLORS)


class ColorTokenizer:
    spec = TextSpec(context_length=4, pad_id=0)

    def __call__(self, texts):
        ids = torch.zeros(len(texts), 4, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [w for w in text.lower().replace(".", " ").split() if w in COLORS]
            ids[row, 0] = WORDS.index(words[0]) + 1 if words else 0
        return ids

    def save_pretrained(self, directory):
        raise NotImplementedError


class ColorClip(ClipModel):
    def __init__(self):
        super().__init__()
        self.model_type, self.embed_dim = "color-clip", 3
        self.tokenizer = ColorTokenizer()
        self.preprocess = PreprocessSpec(height=32, width=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                         resize_mode="squash", interpolation="bilinear")
        table = torch.tensor([[0.01, 0.0, 0.0]] + [[c / 127.5 - 1 for c in rgb] for rgb in COLORS.values()])
        self.vision_tower = nn.Identity()
        self.text_tower = nn.Embedding.from_pretrained(table)
        self.logit_scale = nn.Parameter(torch.tensor(2.3))
        self.logit_bias = None

    def image_features(self, images):
        return images.mean(dim=(2, 3))

    def text_features(self, input_ids):
        return self.text_tower(input_ids[:, 0])

    def vision_blocks(self):
        return []

    def text_blocks(self):
        return []

    def set_grad_checkpointing(self, enable=True):
        pass


@hookimpl
def register_backbones(register):
    register(BackboneFamily(name="color", types=("color-clip",), build=lambda cfg: ColorClip(),
                            tiny=lambda t: ColorClip(), description="test family with known embeddings"))
'''.format(colors=COLORS)


def install_color_clip(root: Path) -> Path:
    """Install ``color-clip`` as a distribution under ``root`` and make this process see it."""
    path = make_distribution(root, "clipcore-eval-test-plugins", "1.0", {"color_clip": COLOR_CLIP})
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from core.registry import get_registry

    get_registry.cache_clear()
    return path


def subprocess_env(plugin_root: Path) -> dict[str, str]:
    """Environment for a subprocess (torchrun) that must see the test plugin."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_root), repo, env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def color_image(path: Path, color: str, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLORS[color]).save(path)
    return path


def write_spec(path: Path, results_dir: Path, body: str = "", model: str = "color-clip") -> Path:
    """A spec for ``model`` (color-clip needs no weights) writing to ``results_dir``."""
    path.write_text(f'results_dir = "{results_dir}"\n\n[model]\ntype = "{model}"\n\n'
                    "[evaluate]\nnum_workers = 0\nbatch_size = 3\n\n[inference]\nnum_workers = 0\nbatch_size = 3\n\n"
                    "[dataset.val]\nnum_workers = 0\nbatch_size = 3\n" + body)
    return path
