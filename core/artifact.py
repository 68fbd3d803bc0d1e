"""The export sidecars and how deploy-time code finds a model's files from one path.

An export writes, beside its model file(s):

- ``<stem>_config.yaml``: TAO's layout (the experiment config, with ``model.init_logit_scale`` /
  ``init_logit_bias`` set to the trained values, log-space scale) plus a ``deploy`` section that
  holds everything a runtime needs (see :data:`DEPLOY_KEYS`), and optionally ``provenance``: where
  the weights came from (checkpoint, merged LoRA adapters, WiSE-FT α), and ``classifier``: the
  classes, scoring, temperature and thresholds of a classifier exported with the image graph
  (:meth:`core.classifier.Classifier.sidecar`);
- ``<stem>_tokenizer/``: a Hugging Face tokenizer directory (``tokenizer.json``).

``<stem>`` is the export's base stem: ``model`` for ``model.onnx`` and for the separate pair
``model_vision.onnx`` / ``model_text.onnx``. This module is torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from core.errors import ClipcoreError

FORMAT = "clipcore-deploy"
VERSION = 1
CONFIG_SUFFIX = "_config.yaml"
TOKENIZER_SUFFIX = "_tokenizer"
EXTERNAL_DATA_SUFFIX = "_weights.bin"
TOWERS = ("vision", "text")
EXPORT_SUFFIX, ENGINE_SUFFIX = ".onnx", ".engine"  # TAO's default output files of export / gen_trt_engine
DEPLOY_KEYS = ("format", "version", "model_type", "embed_dim", "encoder_type", "files", "external_data",
               "batch_size", "attention_mask_input", "inputs", "outputs", "preprocess", "text", "logit_scale",
               "logit_bias", "matching")


@dataclass(frozen=True)
class Artifacts:
    """A deployed model's files: ``files`` maps ``combined`` or ``vision`` / ``text`` (one or both)
    to model files; ``deploy`` is the sidecar's ``deploy`` section; ``tokenizer_dir`` the exported
    tokenizer; ``base`` the export's base path (folder / stem)."""

    files: dict[str, Path]
    deploy: dict[str, Any]
    config_path: Path
    tokenizer_dir: Path
    base: Path


def tower_of(path: Path) -> tuple[str, str]:
    """``(tower, base stem)`` of a model file: ``("vision", "m")`` for ``m_vision.onnx``,
    ``("combined", "m")`` for ``m.onnx``."""
    for tower in TOWERS:
        if path.stem.endswith("_" + tower):
            return tower, path.stem[: -len(tower) - 1]
    return "combined", path.stem


def tower_file(base: Path, tower: str, suffix: str) -> Path:
    """The file of ``tower`` for the base path ``base`` (``folder/stem``)."""
    name = base.name if tower == "combined" else f"{base.name}_{tower}"
    return base.with_name(name + suffix)


def tower_paths(path: str | Path) -> list[Path]:
    """The per-tower files of a ``separate`` export whose path is ``path`` (``m.onnx`` ->
    ``m_vision.onnx``, ``m_text.onnx``)."""
    path = Path(path)
    return [tower_file(path.with_suffix(""), tower, path.suffix) for tower in TOWERS]


def find_model_files(path: str | Path, suffixes: Iterable[str], *, key: str) -> tuple[Path, dict[str, Path]]:
    """Resolve a user-given path to ``(base, {tower: file})``.

    ``path`` is a model file (combined, or one tower whose partner is picked up when it exists) or
    the base path of a separate export (``model.onnx`` or ``model`` when only ``model_vision.onnx``
    and ``model_text.onnx`` exist). ``key`` is the config key it came from, for messages.
    """
    path, suffixes = Path(path), tuple(suffixes)
    if path.is_file() and path.suffix in suffixes:
        tower, stem = tower_of(path)
        base = path.with_name(stem)
        if tower == "combined":
            return base, {"combined": path}
        files = {t: tower_file(base, t, path.suffix) for t in TOWERS}
        return base, {t: f for t, f in files.items() if f.is_file()}
    base = path.with_suffix("") if path.suffix in suffixes else path
    for suffix in suffixes:
        files = {t: tower_file(base, t, suffix) for t in TOWERS}
        found = {t: f for t, f in files.items() if f.is_file()}
        if found:
            return base, found
    looked = [str(path)] + [str(tower_file(base, t, s)) for s in suffixes for t in TOWERS]
    raise ClipcoreError(f"no model file found at {path}", where=key,
                        fix="point it at a model file or at the base path of a separate export; looked for: "
                            + ", ".join(dict.fromkeys(looked)))


def sidecar_dirs(folder: Path) -> list[Path]:
    """Where the sidecars may be: beside the model, ``<parent>/export``, ``<parent>`` (TAO's order)."""
    return list(dict.fromkeys([folder, folder.parent / "export", folder.parent]))


def find_sidecars(base: Path) -> tuple[Path, Path]:
    """``(config.yaml, tokenizer dir)`` for the export ``base``; both must exist in one of
    :func:`sidecar_dirs`."""
    config_name, tokenizer_name = base.name + CONFIG_SUFFIX, base.name + TOKENIZER_SUFFIX
    for folder in sidecar_dirs(base.parent):
        config, tokenizer = folder / config_name, folder / tokenizer_name
        if config.is_file() and tokenizer.is_dir():
            return config, tokenizer
    places = ", ".join(str(d) for d in sidecar_dirs(base.parent))
    raise ClipcoreError(
        f"the export sidecars {config_name} and {tokenizer_name}/ are missing beside {base.parent}",
        where=str(base.parent),
        fix=f"copy them from the folder `core export` wrote (looked in: {places}); "
            "`core gen_trt_engine` copies them beside the engines it builds")


def read_deploy_section(config_path: Path) -> dict[str, Any]:
    """The ``deploy`` section of a ``_config.yaml``, checked for format and version."""
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ClipcoreError(f"cannot read {config_path}: {exc}", where=str(config_path),
                            fix="re-export the model with `core export`") from None
    deploy = data.get("deploy") if isinstance(data, dict) else None
    if not isinstance(deploy, dict) or deploy.get("format") != FORMAT:
        raise ClipcoreError(f"{config_path} has no clipcore `deploy` section (a TAO export?)",
                            where=str(config_path),
                            fix="re-export the model with `core export`, which writes the preprocessing and "
                                "tokenisation rules a runtime needs")
    if deploy.get("version") != VERSION:
        raise ClipcoreError(f"{config_path} is deploy format version {deploy.get('version')}, this clipcore "
                            f"reads version {VERSION}", where=str(config_path),
                            fix="re-export the model with this clipcore version")
    missing = [k for k in DEPLOY_KEYS if k not in deploy]
    if missing:
        raise ClipcoreError(f"{config_path}: the deploy section lacks {', '.join(missing)}",
                            where=str(config_path), fix="re-export the model with `core export`")
    return deploy


def locate(path: str | Path, suffixes: Iterable[str], *, key: str) -> Artifacts:
    """Everything a runner needs, from a model file or a separate export's base path."""
    base, files = find_model_files(path, suffixes, key=key)
    config_path, tokenizer_dir = find_sidecars(base)
    return Artifacts(files=files, deploy=read_deploy_section(config_path), config_path=config_path,
                     tokenizer_dir=tokenizer_dir, base=base)


def check_external_data(onnx_path: Path, deploy: dict[str, Any]) -> None:
    """Refuse an ONNX file whose external-data file (recorded at export) is not beside it."""
    name = (deploy.get("external_data") or {}).get(onnx_path.name)
    if name and not (onnx_path.resolve().parent / name).is_file():
        raise ClipcoreError(
            f"{onnx_path.name} keeps its weights in the external-data file {name}, which is missing from "
            f"{onnx_path.resolve().parent}", where=str(onnx_path),
            fix=f"put {name} beside the .onnx file under exactly that name (the .onnx records it; never rename it)")
