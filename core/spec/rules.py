"""Cross-field rules of a loaded spec, checked up front for one action (``core.spec.load.check``).

Single-field ranges are checked while loading (:class:`core.spec.config.Rule`); this module checks what
needs several fields, the plugin registry or the file system: registered names (model type, loss,
dataset format), interval ordering, the data and files an action needs, and the plugins' own rules and those of the dataset format, loss, exporter and engine builder in use (their
``check(cfg)``, and the path fields of their config sections). All problems are reported together
in one ConfigError.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

import attrs

from core.spec.config import EvalConfig, ExperimentConfig
from core.artifact import ENGINE_SUFFIX, EXPORT_SUFFIX, tower_paths
from core.errors import ClipcoreError, ConfigError
from core.registry import Registry, get_registry
from core.storage import Storage, is_url
from core.tracking import logger_names
from core.spec.problems import Problem, raise_problems

#: storage_options names that hold credentials (fsspec's S3, GCS and Azure filesystems).
CREDENTIAL_NAMES = {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                    "aws_session_token", "account_key", "sas_token", "connection_string", "client_secret"}
TAO_ACTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine")
ACTIONS = ("train", "evaluate", "inference", "linear_probe", "calibrate", "export",
           "gen_trt_engine")  # TAO's, and clipcore's own


def check(cfg: ExperimentConfig, action: str | Sequence[str], registry: Registry | None = None, *,
          check_paths: bool = True) -> None:
    """Raise one ConfigError listing every cross-field problem of ``cfg`` for ``action`` (or for
    each of several actions, each problem once).

    ``check_paths=False`` skips the checks that input files exist (to validate a spec written for
    another machine). A file made by another of the actions checked (the checkpoint of train, the
    ONNX file of export, the engine of gen_trt_engine) need not exist yet."""
    actions = [action] if isinstance(action, str) else list(action)
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown:
        raise ConfigError(f"unknown action {unknown[0]!r}", fix="valid actions: " + ", ".join(ACTIONS))
    checker = _Checker(cfg, get_registry() if registry is None else registry, check_paths, set(actions))
    for name in actions:
        getattr(checker, name)()
        checker.writable(name)
    if checker.reads_urls and check_paths:
        checker.folder_writable("dataset.cache_dir", Storage.of(cfg.dataset).cache_dir)
    checker.no_credentials("dataset.storage_options", cfg.dataset.storage_options)
    raise_problems(list(dict.fromkeys(checker.problems)))


class _Checker:
    def __init__(self, cfg: ExperimentConfig, registry: Registry, check_paths: bool, actions: set[str]):
        self.cfg, self.registry, self.check_paths, self.actions = cfg, registry, check_paths, actions
        self.problems: list[Problem] = []
        self.reads_urls = False  # some input is a URL: the data cache must be writable

    def problem(self, key: str, what: str, fix: str | None = None) -> None:
        self.problems.append(Problem(key, what, fix))

    # -- building blocks ----------------------------------------------------------------------
    def registered(self, kind: str, name: str, key: str) -> Any | None:
        try:
            return self.registry.get(kind, name, key=key)
        except ClipcoreError as err:
            self.problem(key, err.what, err.fix)
            return None

    def exists(self, key: str, path: str | None, kind: Literal["file", "dir", "any"] = "any",
               made_by: str | None = None) -> None:
        if is_url(path):
            self.reads_urls = True
        if not self.check_paths or path is None or "://" in path or made_by in self.actions:
            return
        p = Path(path).expanduser()
        ok = p.is_file() if kind == "file" else p.is_dir() if kind == "dir" else p.exists()
        if not ok:
            what = {"file": "file", "dir": "folder", "any": "path"}[kind]
            found = "is not a " + what if p.exists() else "does not exist"
            self.problem(key, f"{what} {path} {found}", f"fix the path in {key}, or create it")

    def no_credentials(self, key: str, options: dict[str, Any]) -> None:
        """No credential in ``options`` (the spec is copied into checkpoints, sidecars and tracker runs)."""
        for name, value in options.items():
            if isinstance(value, dict):
                self.no_credentials(f"{key}.{name}", value)
            elif name.lower() in CREDENTIAL_NAMES:
                self.problem(f"{key}.{name}", "is a credential, and the spec is copied into checkpoints, export "
                             "sidecars and tracker runs", "remove it; give the store its credentials the standard way "
                             "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a profile for s3://, "
                             "GOOGLE_APPLICATION_CREDENTIALS for gs://)")

    def writable(self, action: str) -> None:
        """The folder ``action`` writes to can be created and written here."""
        if not self.check_paths:
            return
        own = getattr(getattr(self.cfg, action), "results_dir", None)
        key, path = (f"{action}.results_dir", Path(own)) if own else ("results_dir", Path(self.cfg.results_dir) / action)
        if "://" not in str(path):
            self.folder_writable(key, path)

    def folder_writable(self, key: str, path: Path) -> None:
        """``path`` (config key ``key``) can be created as a folder and written."""
        existing = path.expanduser().absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            self.problem(key, f"{path} cannot be created: {existing} is a file, not a folder",
                         f"set {key} to a folder path")
        elif not os.access(existing, os.W_OK):
            why = "is on a read-only file system" if os.statvfs(existing).f_flag & os.ST_RDONLY else "is not writable"
            self.problem(key, f"{path} cannot be written: {existing} {why}", f"set {key} to a folder you can write to")

    def exists_or_towers(self, key: str, path: str | None, made_by: str) -> None:
        """A combined file, or a base path whose per-tower files exist."""
        if self.check_paths and path is not None and made_by not in self.actions \
                and not Path(path).exists() and not any(p.exists() for p in tower_paths(path)):
            names = ", ".join(str(p) for p in tower_paths(path))
            self.problem(key, f"{path} does not exist (nor do {names})",
                         f"point {key} at the file written by the previous step")

    def entries(self, key: str, entries: list[Any]) -> None:
        for i, entry in enumerate(entries):
            self.exists(f"{key}.{i}.image_dir", entry.image_dir)
            for name, kind in (("image_list_file", "file"), ("caption_dir", "any")):
                self.exists(f"{key}.{i}.{name}", getattr(entry, name, None), kind)

    def path_fields(self, key: str, values: Any) -> None:
        """The fields of a section marked as paths (``opt(path=...)``) exist."""
        for f in attrs.fields(type(values)):
            if f.metadata.get("path"):
                self.exists(f"{key}.{f.name}", getattr(values, f.name), f.metadata["path"])

    def plugin(self, obj: Any, key: str) -> None:
        """A plugin's own rules (its ``check(cfg)``) and the path fields of its config sections."""
        own_check = getattr(obj, "check", None)
        if own_check is not None:
            try:
                own_check(self.cfg)
            except ClipcoreError as err:
                self.problem(err.where or key, err.what, err.fix)
        for section in getattr(obj, "config_sections", ()):
            self.path_fields(section.path, section.of(self.cfg))

    def model(self) -> None:
        try:
            family = self.registry.backbone_for(self.cfg.model.type)
        except ClipcoreError as err:
            self.problem("model.type", err.what, err.fix)
            return
        self.plugin(family, "model")

    def weights(self, section: str, ev: EvalConfig) -> None:
        """At most one of checkpoint / onnx_file / trt_engine, and it must exist."""
        chosen = [n for n in ("checkpoint", "onnx_file", "trt_engine") if getattr(ev, n) is not None]
        if len(chosen) > 1:
            self.problem(section, f"{' and '.join(f'{section}.{n}' for n in chosen)} are all set",
                         "set only one: a checkpoint, an ONNX file or an engine")
        self.exists(f"{section}.checkpoint", ev.checkpoint, "file", made_by="train")
        self.exists_or_towers(f"{section}.onnx_file", ev.onnx_file, made_by="export")
        self.exists_or_towers(f"{section}.trt_engine", ev.trt_engine, made_by="gen_trt_engine")

    # -- actions --------------------------------------------------------------------------------
    def train(self) -> None:
        cfg, t, m = self.cfg, self.cfg.train, self.cfg.model
        self.model()
        if t.validation_interval > t.num_epochs:
            self.problem("train.validation_interval",
                         f"{t.validation_interval} is larger than train.num_epochs ({t.num_epochs})",
                         "set validation_interval <= num_epochs")
        if t.checkpoint_interval_unit == "epoch" and t.checkpoint_interval > t.num_epochs:
            self.problem("train.checkpoint_interval",
                         f"{t.checkpoint_interval} epochs is larger than train.num_epochs ({t.num_epochs})",
                         'set checkpoint_interval <= num_epochs (or checkpoint_interval_unit = "step")')
        if m.regularization.enabled and m.pretrained is False and not t.pretrained_model_path:
            self.problem("model.regularization.enabled", "the regularizer keeps the model near its starting weights, "
                         "but the model starts from random weights (model.pretrained = false)",
                         "start from weights: set model.pretrained (published weights or a path) or "
                         "train.pretrained_model_path, or disable model.regularization")
        if m.peft.enabled:
            for key in ("freeze_vision_encoder", "freeze_text_encoder", "vision_unlocked_layers", "text_unlocked_layers"):
                if getattr(m, key):
                    self.problem(f"model.{key}", "does not apply with model.peft.enabled: only the adapters (and the "
                                 "logit scale / bias) train", f"unset model.{key}, or use model.peft.<tower>.enabled "
                                 "and num_last_blocks to choose what adapts")
        for tower in ("vision", "text"):
            if getattr(m, f"{tower}_unlocked_layers") and not getattr(m, f"freeze_{tower}_encoder"):
                self.problem(f"model.{tower}_unlocked_layers",
                             f"only applies when model.freeze_{tower}_encoder = true",
                             f"set freeze_{tower}_encoder = true (to train only the last blocks) "
                             f"or {tower}_unlocked_layers = 0")
        loss = self.registered("losses", t.loss_type, "train.loss_type")
        if loss is not None:
            self.plugin(loss, "train")
        for name in logger_names(cfg, self.registry):
            logger = self.registered("loggers", name, "train.loggers")
            if logger is not None:
                self.plugin(logger, "train.loggers")
        data = cfg.dataset.train
        fmt = self.registered("dataset_formats", data.type, "dataset.train.type")
        if fmt is not None:
            self.plugin(fmt, "dataset.train")
        self.entries("dataset.train.datasets", data.datasets)
        self.reference()
        if cfg.dataset.val.datasets:
            self.registered("dataset_formats", cfg.dataset.val.type, "dataset.val.type")
            self.entries("dataset.val.datasets", cfg.dataset.val.datasets)
        if t.resume_training_checkpoint_path not in (None, "auto", "latest"):
            self.exists("train.resume_training_checkpoint_path", t.resume_training_checkpoint_path, "file")
        self.exists("train.pretrained_model_path", t.pretrained_model_path, "file")

    def reference(self) -> None:
        """The guard set (``dataset.reference``) and the bound on its drop."""
        ref, t = self.cfg.dataset.reference, self.cfg.train
        if ref.datasets:
            self.registered("dataset_formats", ref.type, "dataset.reference.type")
            self.entries("dataset.reference.datasets", ref.datasets)
        self.exists("dataset.reference.classification_dir", ref.classification_dir, "dir")
        self.exists("dataset.reference.class_names_file", ref.class_names_file, "file")
        if t.reference_max_drop is not None and not (ref.datasets or ref.classification_dir):
            self.problem("train.reference_max_drop", "is set, but there is no reference set",
                         "add [[dataset.reference.datasets]] or dataset.reference.classification_dir, or unset it")
        if not t.reference_metric.startswith("ref/"):
            self.problem("train.reference_metric", f"{t.reference_metric!r} is not a guard-set metric",
                         'name a ref/ metric, e.g. "ref/t2i_R@1" or "ref/classification/top1"')

    def evaluate(self) -> None:
        val, ev = self.cfg.dataset.val, self.cfg.evaluate
        self.model()
        if not val.datasets and ev.classification_dir is None and ev.reid_query is None:
            self.problem("dataset.val.datasets", "evaluate needs validation data",
                         "add a [[dataset.val.datasets]] table with image_dir (and caption_dir) for "
                         "retrieval, or set evaluate.classification_dir for zero-shot classification, or "
                         "evaluate.reid_query for re-identification")
        if val.datasets:
            self.registered("dataset_formats", val.type, "dataset.val.type")
            self.entries("dataset.val.datasets", val.datasets)
        self.exists("evaluate.classification_dir", ev.classification_dir, "dir")
        self.exists("evaluate.class_names_file", ev.class_names_file, "file")
        self.path_fields("evaluate", ev)
        self.weights("evaluate", ev)

    def inference(self) -> None:
        inf = self.cfg.inference
        self.model()
        if not inf.datasets and inf.text_file is None and inf.detections is None:
            self.problem("inference", "nothing to embed: inference.datasets, inference.text_file and "
                         "inference.detections are unset", "add an [[inference.datasets]] table with image_dir, or "
                         "set inference.text_file or inference.detections")
        self.entries("inference.datasets", inf.datasets)
        if inf.features == "patch" and (inf.onnx_file or inf.trt_engine):
            self.problem("inference.features", "patch features come from the PyTorch model's vision blocks, and "
                         f"inference.{'onnx_file' if inf.onnx_file else 'trt_engine'} is set",
                         "embed with inference.checkpoint (or the pretrained weights), or set features = \"embedding\"")
        self.exists("inference.text_file", inf.text_file, "file")
        self.path_fields("inference", inf)
        self.weights("inference", inf)

    def linear_probe(self) -> None:
        lp = self.cfg.linear_probe
        self.model()
        if lp.train_dir is None:
            self.problem("linear_probe.train_dir", "is unset: the probe needs labelled training images",
                         "point it at a folder with one sub-folder of images per class")
        self.path_fields("linear_probe", lp)
        self.weights("linear_probe", lp)

    def calibrate(self) -> None:
        cal = self.cfg.calibrate
        self.model()
        if cal.val_dir is None:
            self.problem("calibrate.val_dir", "is unset: calibration needs labelled images",
                         "point it at a folder with one sub-folder of images per class")
        self.path_fields("calibrate", cal)
        self.weights("calibrate", cal)

    def export(self) -> None:
        ex = self.cfg.export
        self.model()
        try:
            exporter = self.registry.for_suffix("exporters", ex.onnx_file or "model" + EXPORT_SUFFIX, key="export.onnx_file")
        except ClipcoreError as err:
            self.problem(err.where or "export.onnx_file", err.what, err.fix)
        else:
            self.plugin(exporter, "export")
            if ex.precision not in exporter.precisions:
                self.problem("export.precision", f"the {exporter.name} exporter does not write {ex.precision}",
                             "use one of: " + ", ".join(exporter.precisions))
        self.exists("export.checkpoint", ex.checkpoint, "file", made_by="train")
        self.path_fields("export", ex)
        if ex.precision != "fp32" and not self.cfg.dataset.val.datasets:
            self.problem("dataset.val.datasets", f"export.precision = {ex.precision!r} is scored on dataset.val "
                         "before the export is kept, and dataset.val has no data",
                         "add [[dataset.val.datasets]] (held-out image-caption pairs), or export fp32")
        if ex.onnx_file is not None and not ex.force:
            outputs = [Path(ex.onnx_file)] if ex.encoder_type == "combined" else tower_paths(ex.onnx_file)
            taken = [str(p) for p in outputs if p.exists()]
            if taken:
                self.problem("export.onnx_file", f"{', '.join(taken)} already exists",
                             "set export.force = true to overwrite, or choose another onnx_file")

    def gen_trt_engine(self) -> None:
        gen = self.cfg.gen_trt_engine
        if gen.onnx_file is None:
            self.problem("gen_trt_engine.onnx_file", "not set",
                         "point it at the ONNX file written by `core export` (export.onnx_file)")
        self.exists_or_towers("gen_trt_engine.onnx_file", gen.onnx_file, made_by="export")
        engine = gen.trt_engine or "model" + ENGINE_SUFFIX
        try:
            builder = self.registry.for_suffix("engine_builders", engine, key="gen_trt_engine.trt_engine")
        except ClipcoreError as err:
            self.problem(err.where or "gen_trt_engine.trt_engine", err.what, err.fix)
            return
        self.plugin(builder, "gen_trt_engine")
