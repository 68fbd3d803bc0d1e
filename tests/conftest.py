"""Fixtures shared by the test groups: ``core/`` (the framework), ``plugins/`` (each built-in
plugin), ``kit/`` (the conformance kit), ``e2e/`` (whole workflows) and ``bench/``.

- ``fake_plugin``, ``distribution``: plugins for a test, in memory or installed as a real
  distribution (dist-info + entry points) that subprocesses find too;
- ``training``: the test plugins of the training tests (``fake_plugins/synthetic_data.py``,
  ``nan_loss.py``) installed, a tiny ``example-tiny`` run as a config or a spec file, and the
  environment of a subprocess that sees them;
- ``color_clip``: a backbone whose embeddings are known exactly (``fake_plugins/color_clip.py``);
- ``data_kit``: image bytes, folders of pairs, configs and requests for dataset-format tests;
- ``exports``: export configs, sample images and texts, and the closeness check of deploy tests;
- ``tmpfs``: a small tmpfs mounted for a test (read-only or full disks);
- ``s3``: a real S3 API server on loopback (``s3_server.py``), its client environment set.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

from core.backbone import PreprocessSpec
from core.registry import Provider, get_registry
from tests import s3_server

REPO = Path(__file__).resolve().parents[1]
FAKE_PLUGINS = Path(__file__).with_name("fake_plugins")


# --------------------------------------------------------------------------- plugins
def make_distribution(root: Path, name: str, version: str, modules: dict[str, str]) -> Path:
    """Write ``modules`` ({entry-point name: module source}) as an installed distribution ``name``
    ``version`` under ``root``, its entry points in ``clipcore.plugins`` pointing at them."""
    root.mkdir(parents=True, exist_ok=True)
    package = name.replace("-", "_")
    lines = ["[clipcore.plugins]"]
    for ep_name, source in modules.items():
        (root / f"{package}_{ep_name}.py").write_text(textwrap.dedent(source))
        lines.append(f"{ep_name} = {package}_{ep_name}")
    info = root / f"{package}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def distribution() -> Callable[..., Path]:
    """``distribution(root, name, version, {entry point: source})``: a real installed distribution."""
    return make_distribution


@pytest.fixture(scope="session")
def fake_plugin() -> Callable[..., tuple[Provider, types.ModuleType]]:
    """``fake_plugin(name, source, version="1.0")``: a (provider, in-memory module) pair for
    ``load_registry(plugins=[...])``."""
    def fake(name: str, source: str, version: str = "1.0") -> tuple[Provider, types.ModuleType]:
        module = types.ModuleType(name)
        exec(textwrap.dedent(source), module.__dict__)
        return Provider(name, f"fake-{name}", version), module
    return fake


def _installed(root: Path, name: str, plugins: dict[str, str]) -> Iterator[Path]:
    """Install ``fake_plugins/<file>.py`` as entry points ({entry point: file stem}) for one scope."""
    path = make_distribution(root, name, "1.0", {ep: (FAKE_PLUGINS / f"{stem}.py").read_text()
                                                 for ep, stem in plugins.items()})
    sys.path.insert(0, str(path))
    get_registry.cache_clear()
    yield path
    sys.path.remove(str(path))
    get_registry.cache_clear()


def plugin_env(plugin_root: Path, plugins: str | None = None, **extra: str) -> dict[str, str]:
    """Environment of a subprocess that sees the plugins under ``plugin_root`` (only ``plugins``,
    comma-separated entry-point names, when given, so it starts fast), on one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(plugin_root), str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    if plugins:
        env["CLIPCORE_PLUGINS"] = plugins
    return env


# --------------------------------------------------------------------------- training
#: A 2-epoch run of ``example-tiny`` on the synthetic pairs (4 steps per epoch at batch 16).
TINY_RUN = ["model.type=example-tiny", "model.pretrained=false", "model.image_size=32",
            "train.num_epochs=2", "train.loss_type=siglip", "train.precision=fp32", "train.log_every_n_steps=1",
            "train.optim.warmup_steps=2", "train.optim.vision_lr=1e-3", "train.optim.text_lr=1e-3",
            "dataset.train.type=synthetic", "dataset.train.batch_size=16", "dataset.train.num_workers=0",
            "dataset.val.type=synthetic", "dataset.val.batch_size=32", "dataset.val.num_workers=0"]


class Training:
    """The training tests' plugins (installed under ``root``) and tiny runs on them."""

    PLUGINS = "example_backbone,siglip_loss,clip_loss,synthetic_data,nan_loss,tensorboard"

    def __init__(self, root: Path):
        self.root = root

    def overrides(self, results_dir: Path, *, validate: bool = False, **train: Any) -> list[str]:
        """The tiny run writing to ``results_dir`` as dotted overrides; ``validate`` adds validation
        on the same 64 pairs, ``train`` sets ``train.*`` fields."""
        import tomli_w

        extra = [f"train.{key}={tomli_w.dumps({'v': value})[4:].strip()}" for key, value in train.items()]
        return [*TINY_RUN, f"results_dir={results_dir}",
                *(["dataset.val.datasets.0.image_dir=synthetic"] if validate else []), *extra]

    def config(self, results_dir: Path, *, validate: bool = False, **train: Any) -> Any:
        """The tiny run as a loaded config."""
        from core.spec.load import load_config

        return load_config(None, self.overrides(results_dir, validate=validate, **train))

    def write_spec(self, path: Path, results_dir: Path) -> Path:
        """The tiny run as a spec file (the same values as :meth:`config`)."""
        import tomli_w

        from core.spec.load import load_spec

        path.write_text(tomli_w.dumps(load_spec(None, self.overrides(results_dir)).data))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        return plugin_env(self.root, self.PLUGINS, **extra)


@pytest.fixture(scope="session")
def training(tmp_path_factory) -> Iterator[Training]:
    for root in _installed(tmp_path_factory.mktemp("train-plugins"), "clipcore-train-test-plugins",
                           {"synthetic_data": "synthetic_data", "nan_loss": "nan_loss"}):
        yield Training(root)


# --------------------------------------------------------------------------- evaluation
class ColorClip:
    """``color-clip`` installed under ``root``: an image embeds as its mean normalised RGB, a text as
    the RGB vector of its first colour word, so every score is known in advance."""

    def __init__(self, root: Path, colors: dict[str, tuple[int, int, int]]):
        self.root, self.colors = root, colors

    def image(self, path: Path, color: str, size=(40, 30)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, self.colors[color]).save(path)
        return path

    def class_folders(self, root: Path, per_class: int, seed: int,
                      classes: Sequence[str] = ("red", "green", "blue", "yellow")) -> Path:
        """ImageFolder classes of solid images of each class's colour, shifted by seeded noise (so a
        classifier has something to learn)."""
        rng = np.random.default_rng(seed)
        for name in classes:
            for i in range(per_class):
                rgb = np.clip(np.array(self.colors[name]) + rng.integers(-90, 91, size=3), 0, 255)
                (root / name).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 10), tuple(int(c) for c in rgb)).save(root / name / f"{i:03d}.png")
        return root

    def write_spec(self, path: Path, results_dir: Path, body: str = "", model: str = "color-clip") -> Path:
        """A spec for ``model`` (color-clip needs no weights) writing to ``results_dir``."""
        path.write_text(f'results_dir = "{results_dir}"\n\n[model]\ntype = "{model}"\n\n'
                        "[evaluate]\nnum_workers = 0\nbatch_size = 3\n\n[inference]\nnum_workers = 0\nbatch_size = 3\n\n"
                        "[dataset.val]\nnum_workers = 0\nbatch_size = 3\n" + body)
        return path

    def env(self) -> dict[str, str]:
        return plugin_env(self.root)


@pytest.fixture(scope="module")
def color_clip(tmp_path_factory) -> Iterator[ColorClip]:
    for root in _installed(tmp_path_factory.mktemp("color-plugin"), "clipcore-eval-test-plugins",
                           {"color_clip": "color_clip"}):
        from clipcore_eval_test_plugins_color_clip import COLORS

        yield ColorClip(root, COLORS)


# --------------------------------------------------------------------------- data
class Data:
    """Builders for dataset-format tests: real image bytes, folders of pairs, configs, requests
    with a byte tokenizer, and what a loader yields."""

    SPEC = PreprocessSpec(height=16, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash",
                          interpolation="bilinear")

    @staticmethod
    def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (24, 16), seed: int = 0, mode: str = "RGB",
                    **save: Any) -> bytes:
        """A small random image encoded as ``fmt``."""
        rng = np.random.default_rng(seed)
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **save)
        return buffer.getvalue()

    def write_folder(self, root: Path, n: int, *, captions: Path | None = None, suffix: str = ".txt",
                     ext: str = ".png", start: int = 0) -> None:
        """``n`` images ``img-<i><ext>`` under ``root`` with captions ``caption <i>`` beside them (or in
        ``captions``)."""
        root.mkdir(parents=True, exist_ok=True)
        folder = captions or root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            (root / f"img-{i:03d}{ext}").write_bytes(self.image_bytes(seed=i))
            (folder / f"img-{i:03d}{suffix}").write_text(f"caption {i}")

    @staticmethod
    def config(*entries: Any, on_bad_sample: str = "skip") -> Any:
        from core.spec.load import load_config

        cfg = load_config(None)
        cfg.dataset.on_bad_sample = on_bad_sample
        cfg.dataset.train.datasets = list(entries)
        cfg.dataset.val.datasets = list(entries)
        return cfg

    def request(self, cfg: Any, results: Path | None = None, *, batch_size: int = 2, rank: int = 0,
                world_size: int = 1, seed: int = 0, num_workers: int = 0, transform: Any = None) -> Any:
        from core.data import DataRequest
        from core.runtime.transforms import eval_transform
        from core.testing.data_checks import ByteTokenizer

        return DataRequest(config=cfg, transform=transform or eval_transform(self.SPEC), tokenizer=ByteTokenizer(),
                           batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                           num_workers=num_workers, results_dir=None if results is None else str(results))

    @staticmethod
    def epoch_keys(loader: Any, epoch: int = 0) -> list[str]:
        loader.set_epoch(epoch)
        return [key for batch in loader for key in batch["key"]]

    @staticmethod
    def bad_records(results: Path) -> list[dict[str, Any]]:
        path = results / "bad_samples.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="session")
def data_kit() -> Data:
    return Data()


# --------------------------------------------------------------------------- export and deploy
class Exports:
    """Export configs, sample images and texts, and the closeness check of the deploy tests."""

    TEXTS = ["", "a photo of a cat", "Two_dogs, running on the BEACH!!", "naïve café 東京 🚀", "word " * 200]

    @staticmethod
    def config(onnx_file: Path, encoder: str = "combined", **export: Any) -> Any:
        from core.spec.load import load_config

        cfg = load_config(None)
        cfg.export.onnx_file = str(onnx_file)
        cfg.export.encoder_type = encoder
        for key, value in export.items():
            setattr(cfg.export, key, value)
        return cfg

    @staticmethod
    def write_images(folder: Path, sizes=((40, 30), (17, 50), (64, 64))) -> list[Path]:
        """Deterministic RGB, RGBA and palette images of varied sizes and aspect ratios."""
        rng = np.random.default_rng(0)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (w, h) in enumerate(sizes):
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            img = [img, img.convert("RGBA"), img.convert("P")][i % 3]
            paths.append(folder / f"img{i}.png")
            img.save(paths[-1])
        return paths

    @staticmethod
    def assert_close(have: np.ndarray, want: np.ndarray, *, atol: float = 1e-4, min_cosine: float = 0.99999) -> None:
        """Max abs diff <= atol and row-wise cosine >= min_cosine."""
        assert have.shape == want.shape, (have.shape, want.shape)
        diff = float(np.abs(have - want).max())
        cosine = np.sum(have * want, -1) / (np.linalg.norm(have, axis=-1) * np.linalg.norm(want, axis=-1))
        assert diff <= atol, f"max abs diff {diff:.2e} > {atol}"
        assert float(cosine.min()) >= min_cosine, f"cosine {float(cosine.min()):.7f} < {min_cosine}"


@pytest.fixture(scope="session")
def exports() -> Exports:
    return Exports()


# --------------------------------------------------------------------------- file systems
@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (``mount(options)``); skipped where mounting is not permitted."""
    mounted = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


# --------------------------------------------------------------------------- object storage
@pytest.fixture(scope="session")
def s3_session(tmp_path_factory) -> Iterator[s3_server.S3Server]:
    server = s3_server.start(tmp_path_factory.mktemp("s3") / "server.log")
    yield server
    server.stop()


@pytest.fixture
def s3(s3_session, monkeypatch) -> s3_server.S3Server:
    """The session's S3 server, this process's AWS environment pointing at it."""
    for name, value in s3_session.env.items():
        monkeypatch.setenv(name, value)
    return s3_session
