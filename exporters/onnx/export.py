"""Write a :class:`core.backbone.ClipModel` as ONNX with TAO's I/O contract, plus its sidecars.

- Exporter: TorchScript (``dynamo=False``), constant folding, fp32, on CPU, with the
  ``nn.MultiheadAttention`` fast path off so attention traces as plain ops. The TorchScript
  exporter traces these architectures (HF, timm, open_clip towers) reliably and matches what TAO
  used; every export is then checked by ``onnx.checker`` and by an ONNX Runtime run against PyTorch
  on the export batch (cosine >= :data:`GATE_COSINE`, else nothing is written).
- Dynamic batch (axis 0 named ``batch_size``) when ``export.batch_size == -1``; H, W, L static.
- Graphs over :data:`EXTERNAL_DATA_BYTES` of weights keep them in one external-data file
  ``<file stem>_weights.bin`` beside the ``.onnx`` (which records that name: never rename it).
- ``export.precision`` fp16 / int8 (:mod:`exporters.onnx.precision`): the checked fp32 graphs are
  converted, then the export is scored on ``dataset.val`` by :func:`core.accuracy_gate` before it
  is kept; the sidecar records the precision and what the gate measured.
- All files are written in a temporary folder beside the target and moved into place at the end,
  so a refused export writes no model file; existing outputs are refused unless ``export.force``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import torch
import yaml

from core import ClassifierHead, ClipcoreError, ConfigError, accuracy_gate, artifact, calibration_data, load_classifier
from exporters.onnx import precision
from exporters.onnx.graphs import CLASSIFIER_OUTPUTS, GRAPHS
from exporters.onnx.sidecar import config_document, deploy_section

EXTERNAL_DATA_BYTES = 1_900_000_000
GATE_COSINE = 0.9999
GATE_PROBABILITY = 1e-4
BATCH_AXIS = "batch_size"
DUMMY_TEXTS = ("a photo of a cat", "Two_dogs, running on the beach!")


def output_files(onnx_file: str | Path, encoder_type: str) -> dict[str, Path]:
    """``{tower: path}``: ``combined`` -> the file itself; ``separate`` -> ``_vision`` / ``_text``
    inserted before the extension."""
    path = Path(onnx_file)
    if encoder_type == "combined":
        return {"combined": path}
    if encoder_type == "separate":
        return {t: artifact.tower_file(path.with_suffix(""), t, path.suffix) for t in artifact.TOWERS}
    raise ConfigError(f"unknown encoder_type {encoder_type!r}", where="export.encoder_type",
                      fix="use combined or separate")


def export_onnx(model, cfg) -> list[Path]:
    """Export ``model`` (put in fp32 eval mode) as ``cfg.export`` asks; returns the written ``.onnx`` files."""
    ec = cfg.export
    check_request(model, ec)
    files = output_files(ec.onnx_file, ec.encoder_type)
    base = Path(ec.onnx_file).with_suffix("")
    config_path = base.with_name(base.name + artifact.CONFIG_SUFFIX)
    tokenizer_dir = base.with_name(base.name + artifact.TOKENIZER_SUFFIX)
    refuse_existing([*files.values(), *map(external_data_path, files.values()), config_path, tokenizer_dir], ec)

    base.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    classifier = _classifier(model, ec)
    head = ClassifierHead(classifier).eval() if classifier else None
    calibration = calibration_data(cfg, model.preprocess, model.tokenizer, base.parent) if ec.precision == "int8" else None
    with tempfile.TemporaryDirectory(prefix=".export-", dir=base.parent) as tmp:
        staged: dict[Path, Path] = {}
        external: dict[str, str] = {}
        io: dict[str, dict[str, list]] = {"inputs": {}, "outputs": {}}
        for tower, path in files.items():
            work = Path(tmp) / tower
            work.mkdir()
            proto = trace(model, tower, ec, work / path.name, head)
            _record_io(proto, io)
            written = save(proto, Path(tmp) / path.name)
            check(model, tower, written[0], ec, head)
            if ec.precision != "fp32":
                written = reduce_precision(written, ec, calibration)
            if len(written) > 1:
                external[path.name] = written[1].name
            staged.update({w: path.with_name(w.name) for w in written})
        model.tokenizer.save_pretrained(str(Path(tmp) / tokenizer_dir.name))
        staged[Path(tmp) / tokenizer_dir.name] = tokenizer_dir
        deploy = deploy_section(model, cfg, files, external, io)
        if classifier:
            deploy["classifier"] = classifier.sidecar()

        def write_config() -> None:
            text = yaml.safe_dump(config_document(model, cfg, deploy), sort_keys=False)
            (Path(tmp) / config_path.name).write_text(text, encoding="utf-8")

        write_config()
        if ec.precision != "fp32":
            from deploy.onnxruntime_runner import open_runner

            deploy["precision_gate"] = accuracy_gate(cfg, model, open_runner(Path(tmp) / Path(ec.onnx_file).name),
                                                     ec.precision)
            write_config()
        staged[Path(tmp) / config_path.name] = config_path
        for src, dst in staged.items():
            if dst.is_dir():
                shutil.rmtree(dst)
            src.replace(dst)
        for path in map(external_data_path, files.values()):
            if path.exists() and path.name not in external.values():
                path.unlink()  # a stale weights file of an earlier, larger export (overwritten with --force)
    return list(files.values())


def reduce_precision(written: list[Path], ec, calibration) -> list[Path]:
    """Replace the checked fp32 graph (``written``: model file first) by its ``export.precision``
    version; returns the files now written."""
    path = written[0]
    if ec.precision == "fp16":
        proto = precision.to_fp16(onnx.load(str(path)))
    else:
        if ec.batch_size > len(calibration.images):
            raise ConfigError(f"the static export batch {ec.batch_size} is larger than the {len(calibration.images)} "
                              "calibration images", where="export.calibration_images",
                              fix=f"set export.calibration_images >= {ec.batch_size}, or export a dynamic batch (-1)")
        proto = precision.to_int8(path, path, calibration, ec.batch_size)
    for old in written:
        old.unlink()
    return save(proto, path)


def _classifier(model, ec):
    """The classifier of ``export.classifier`` (``None`` when unset), checked against the model."""
    if not ec.classifier:
        return None
    classifier = load_classifier(ec.classifier, key="export.classifier")
    if classifier.weight.shape[1] != model.embed_dim:
        raise ConfigError(f"the classifier takes {classifier.weight.shape[1]}-dimensional embeddings, "
                          f"{model.model_type} makes {model.embed_dim}-dimensional ones", where="export.classifier",
                          fix="export the classifier with the model (and checkpoint) it was fitted on")
    return classifier


def check_request(model, ec) -> None:
    """Refuse what cannot be exported, with the reason."""
    if model.export_refusal:
        raise ClipcoreError(f"{model.model_type} cannot be exported to ONNX: {model.export_refusal}",
                            where="model.type", fix="export a fixed-resolution model type instead")
    if not ec.onnx_file:
        raise ConfigError("no output file given", where="export.onnx_file", fix="set export.onnx_file = 'model.onnx'")
    if ec.opset_version < 11:
        raise ConfigError(f"opset {ec.opset_version} is too old", where="export.opset_version", fix="use 11 or newer (17)")
    if ec.batch_size == 0 or ec.batch_size < -1:
        raise ConfigError(f"batch_size {ec.batch_size} is invalid", where="export.batch_size",
                          fix="use -1 (dynamic batch) or a positive static batch size")


def refuse_existing(targets: list[Path], ec) -> None:
    existing = [str(p) for p in targets if p.exists()]
    if existing and not ec.force:
        raise ClipcoreError(f"refusing to overwrite {', '.join(existing)}", where="export.onnx_file",
                            fix="choose another export.onnx_file, or pass --force (export.force = true)")


def external_data_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.stem + artifact.EXTERNAL_DATA_SUFFIX)


def dummy_inputs(model, tower: str, batch: int) -> dict[str, torch.Tensor]:
    """Real-looking inputs for tracing and for the parity gate."""
    pre = model.preprocess
    generator = torch.Generator().manual_seed(0)
    inputs = {}
    if tower in ("combined", "vision"):
        inputs["image"] = torch.randn(batch, 3, pre.height, pre.width, generator=generator)
    if tower in ("combined", "text"):
        texts = [DUMMY_TEXTS[i % len(DUMMY_TEXTS)] for i in range(batch)]
        inputs["input_ids"] = model.tokenizer(texts).to(torch.int64)
    return inputs


def export_batch(ec) -> int:
    return ec.batch_size if ec.batch_size > 0 else 2


@contextlib.contextmanager
def _tracing_mode() -> Iterator[None]:
    """fp32 math, the MHA fast path off, and the TorchScript exporter's deprecation notice silenced."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.mha.set_fastpath_enabled(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        torch.backends.cuda.matmul.allow_tf32 = tf32


def trace(model, tower: str, ec, path: Path, head=None) -> onnx.ModelProto:
    """Trace one graph to ``path`` and return it with TAO's inputs and static shapes fixed up."""
    graph = GRAPHS[tower](model, head).eval()
    inputs = dummy_inputs(model, tower, export_batch(ec))
    batched = [*graph.inputs, *(name for name in graph.outputs if name.endswith("_embedding")
                                or name in CLASSIFIER_OUTPUTS)]
    dynamic = {name: {0: BATCH_AXIS} for name in batched}
    with _tracing_mode():
        try:
            torch.onnx.export(graph, tuple(inputs.values()), str(path), input_names=list(graph.inputs),
                              output_names=list(graph.outputs), opset_version=ec.opset_version,
                              do_constant_folding=True, dynamic_axes=dynamic if ec.batch_size == -1 else None,
                              dynamo=False, verbose=ec.verbose)
        except Exception as exc:
            raise ClipcoreError(f"{model.model_type}: the {tower} graph cannot be traced to ONNX: "
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                where="model.type",
                                fix="report this to the backbone plugin (the tower must trace with torch.onnx)") from exc
    proto = onnx.load(str(path))
    _name_outputs(proto, graph.outputs)
    _fix_io(proto, model, tower, ec, head)
    return proto


def _name_outputs(proto: onnx.ModelProto, names: tuple[str, ...]) -> None:
    """Give every output its contract name: the TorchScript exporter drops the name of an output
    that is a folded constant (a model without ``logit_bias`` returns 0, a bias parameter is an
    initializer), so such outputs get an ``Identity`` under the right name."""
    for value, name in zip(proto.graph.output, names):
        if value.name != name:
            proto.graph.node.append(onnx.helper.make_node("Identity", [value.name], [name], name=f"{name}_output"))
            value.name = name


def _dims(proto_value: onnx.ValueInfoProto, dims: list[Any]) -> None:
    shape = proto_value.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def _fix_io(proto: onnx.ModelProto, model, tower: str, ec, head=None) -> None:
    """Set exact static shapes, add the ignored ``attention_mask`` input, record the model type."""
    batch: Any = BATCH_AXIS if ec.batch_size == -1 else ec.batch_size
    length = model.tokenizer.spec.context_length
    classes = [batch, head.weight.shape[0]] if head is not None else None
    shapes = {"image": [batch, 3, model.preprocess.height, model.preprocess.width], "input_ids": [batch, length],
              "image_embedding": [batch, model.embed_dim], "text_embedding": [batch, model.embed_dim],
              "logit_scale": [], "logit_bias": [], "logits": classes, "probabilities": classes}
    for value in (*proto.graph.input, *proto.graph.output):
        _dims(value, shapes[value.name])
    names = [i.name for i in proto.graph.input]
    if tower != "vision" and "input_ids" not in names:
        raise ClipcoreError(f"{model.model_type}: the text graph does not use input_ids", where="model.type",
                            fix="report this to the backbone plugin")
    if tower != "vision" and ec.attention_mask_input:
        mask = onnx.helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, [batch, length])
        proto.graph.input.insert(names.index("input_ids") + 1, mask)
    onnx.helper.set_model_props(proto, {"clipcore.model_type": model.model_type, "clipcore.tower": tower})


def _record_io(proto: onnx.ModelProto, io: dict[str, dict[str, list]]) -> None:
    for key, values in (("inputs", proto.graph.input), ("outputs", proto.graph.output)):
        for v in values:
            dims = v.type.tensor_type.shape.dim
            io[key][v.name] = [d.dim_param or d.dim_value for d in dims]


def save(proto: onnx.ModelProto, path: Path, threshold: int | None = None) -> list[Path]:
    """Save ``proto``; weights over ``threshold`` bytes go to ``<stem>_weights.bin``. Returns the
    files written (model first)."""
    threshold = EXTERNAL_DATA_BYTES if threshold is None else threshold
    weights = sum(t.ByteSize() for t in proto.graph.initializer)
    if weights <= threshold:
        onnx.save_model(proto, str(path))
        return [path]
    data = external_data_path(path)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=0)
    return [path, data]


def check(model, tower: str, path: Path, ec, head=None) -> None:
    """``onnx.checker`` (full check), then ONNX Runtime vs PyTorch on the export batch."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ClipcoreError(f"{model.model_type}: the exported {tower} graph is invalid: {str(exc).splitlines()[0]}",
                            where="model.type", fix="report this to the backbone plugin") from None
    gate(model, tower, path, ec, head)


def gate(model, tower: str, path: Path, ec, head=None) -> None:
    """Refuse an export whose ONNX Runtime output disagrees with PyTorch on the export batch
    (embeddings by cosine, a classifier's probabilities by absolute difference)."""
    import onnxruntime as ort

    inputs = dummy_inputs(model, tower, export_batch(ec))
    graph = GRAPHS[tower](model, head).eval()
    with _tracing_mode():
        expected = [t.numpy() for t in graph(*inputs.values())]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in inputs.items()}
    if any(i.name == "attention_mask" for i in session.get_inputs()):
        feeds["attention_mask"] = np.ones_like(feeds["input_ids"])
    got = session.run(list(graph.outputs), feeds)
    for name, want, have in zip(graph.outputs, expected, got):
        if name == "probabilities" and not np.abs(want - have).max() <= GATE_PROBABILITY:
            raise ClipcoreError(f"{model.model_type}: ONNX Runtime's classifier probabilities disagree with PyTorch "
                                f"(max difference {np.abs(want - have).max():.2e} > {GATE_PROBABILITY})",
                                where="export.classifier", fix="report this as a clipcore bug")
        if "embedding" not in name:
            continue
        cosine = float(np.min(np.sum(want * have, axis=-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(have, axis=-1))))
        if not cosine >= GATE_COSINE:
            raise ClipcoreError(f"{model.model_type}: ONNX Runtime's {name} disagrees with PyTorch "
                                f"(cosine {cosine:.6f} < {GATE_COSINE})", where="model.type",
                                fix="report this to the backbone plugin; the traced graph is not faithful")
