"""clipcore: a plugin-registry framework for CLIP-family image-text models.

This package's top level is the plugin API: everything a plugin (built-in or third-party) may use
is listed in ``__all__`` and imported as ``from core import Name``; :mod:`core.testing` is the
conformance kit. The subpackages are internal and may change: :mod:`core.spec` (the experiment
spec), :mod:`core.runtime` (model building, checkpoints, processes, transforms), :mod:`core.eval`
(embedding and metrics), :mod:`core.train` (the training engine) and :mod:`core.cli` (commands).
``docs/plugins.md`` is the guide.

Names are imported on first use, so ``import core`` stays light (the deploy runners use the
torch-free part of the API without importing torch).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_HOME = {
    # hooks and registration
    "hookimpl": "core.hookspecs",
    "ConfigSection": "core.registry", "lazy": "core.registry",
    # errors
    "ClipcoreError": "core.errors", "ConfigError": "core.errors", "DataError": "core.errors",
    "PluginError": "core.errors",
    # declaring config fields
    "opt": "core.fields", "Rule": "core.fields", "InvalidValue": "core.fields", "at_least": "core.fields",
    "above": "core.fields",
    # backbone contract
    "BackboneFamily": "core.backbone", "ClipModel": "core.backbone", "PreprocessSpec": "core.backbone",
    "TowerIntermediates": "core.intermediates", "run_blocks": "core.intermediates",
    "TextSpec": "core.backbone", "Tokenizer": "core.backbone", "init_logit_params": "core.backbone",
    "refuse_model_keys": "core.backbone",
    # loss contract and the collectives a loss over the global batch needs
    "LossSpec": "core.loss", "positive_mask": "core.loss", "world": "core.collectives", "all_gather_with_grad": "core.collectives",
    "exchange_with_grad": "core.collectives", "ring_neighbours": "core.collectives",
    # dataset-format contract and the helpers loaders share
    "DatasetFormat": "core.data", "DataRequest": "core.data", "BatchLoader": "core.data",
    "RetrievalSet": "core.data", "RawSample": "core.data", "DatasetEntry": "core.data",
    "collate_samples": "core.batching", "finish_batch": "core.batching", "worker_seeds": "core.batching",
    "match_id": "core.batching", "MATCH_KINDS": "core.batching",
    "check_global_batch": "core.batching", "too_many_bad": "core.batching", "MAX_CONSECUTIVE_BAD": "core.batching",
    "BadSample": "core.bad_samples", "BadSampleLog": "core.bad_samples",
    "open_image": "core.images", "decoded": "core.images", "to_rgb": "core.images",
    "IMAGE_EXTENSIONS": "core.images", "parse_captions": "core.captions",
    "Storage": "core.storage", "is_url": "core.storage", "TooLarge": "core.storage",
    "ARCHIVE_SUFFIXES": "core.storage",
    # preprocessing rules (torch-free)
    "canonicalize_text": "core.preprocess", "SidecarTokenizer": "core.preprocess", "preprocess_images": "core.preprocess",
    "eval_box": "core.preprocess",
    # exporter / engine-builder contracts and the export artifact (sidecar) contract
    "Exporter": "core.exporter", "EngineBuilder": "core.exporter", "Runner": "core.exporter",
    "artifact": "core.artifact",
    # reduced-precision exports: calibration data and the accuracy gate
    "calibration_data": "core.eval.precision", "CalibrationData": "core.eval.precision",
    "accuracy_gate": "core.eval.precision",
    # classifier heads (linear probes, calibrated zero-shot classifiers) exported with the image graph
    "Classifier": "core.classifier", "ClassifierHead": "core.classifier", "load_classifier": "core.classifier",
    # experiment-logger contract and the metrics.jsonl run record
    "LoggerSpec": "core.tracking", "Run": "core.tracking", "Tracker": "core.tracking",
    "METRICS_FILE": "core.tracking", "metrics_line": "core.tracking", "read_metrics": "core.tracking",
    # weights
    "load_model_weights": "core.weights", "load_checkpoint": "core.weights", "init_logit_values": "core.weights",
    "read_weights_file": "core.weights", "load_torch_file": "core.weights", "load_hf": "core.weights",
    "hf_cache_dir": "core.weights", "hf_offline": "core.weights", "looks_like_path": "core.weights",
    "missing_weights_error": "core.weights", "WEIGHT_SUFFIXES": "core.weights",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'core' has no attribute {name!r} (the plugin API is core.__all__)")
    module = importlib.import_module(home)
    value = module if home.rpartition(".")[2] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
