"""Build TensorRT engines from an ONNX export (``core gen_trt_engine``).

- One optimisation profile: every input's batch axis gets ``tensorrt.min/opt/max_batch_size``
  (or ``batch_size`` for all three when it is positive); other axes are the ONNX file's static
  sizes (text inputs at the tokenizer length, checked against the sidecar).
- ``fp16`` builds keep LayerNorm (``NORMALIZATION``), ``SOFTMAX`` and ``REDUCE`` layers (the final
  L2 norm) in fp32 with ``OBEY_PRECISION_CONSTRAINTS``: SigLIP-style towers lose accuracy
  otherwise. ``layers_precision`` adds ``pattern:fp32|fp16`` overrides (fnmatch on layer names).
- A separate export's base path builds both towers in one call; the sidecars are copied beside
  the engines as ``<engine stem>_config.yaml`` / ``<engine stem>_tokenizer/``.
- ``int8`` builds take an int8 export's QDQ scales as they are, or calibrate an fp32 export
  (:mod:`deploy.tensorrt.calibration`: ranges measured on training images, cached) and give each
  range to its tensor; fp16 is allowed wherever int8 is not, LayerNorm/Softmax/Reduce stay fp32.
- fp32 / fp16 engines are checked against ONNX Runtime on the opt batch (cosine >= 0.999 for fp16,
  0.9999 for fp32); int8 engines are scored by :func:`core.accuracy_gate` on ``dataset.val``
  against the export they come from, and the record goes into the engine sidecar. An engine is moved
  into place only when it passes.
"""

from __future__ import annotations

import fnmatch
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import yaml

from core import ClipcoreError, ConfigError, SidecarTokenizer, accuracy_gate, artifact
from deploy.onnxruntime_runner import OrtGraph
from deploy.runner import ATTENTION_MASK, IMAGE, INPUT_IDS
from deploy.tensorrt.config import SECTION, check

GATE_COSINE = {"fp16": 0.999, "fp32": 0.9999}
SAMPLE_TEXTS = ("a photo of a dog", "two red cubes on a table", "", "Ünïcode and_punctuation!")


def batch_profile(cfg) -> tuple[int, int, int]:
    """``(min, opt, max)`` batch of the single profile."""
    if cfg.gen_trt_engine.batch_size > 0:
        return (cfg.gen_trt_engine.batch_size,) * 3
    t = SECTION.of(cfg)
    return t.min_batch_size, t.opt_batch_size, t.max_batch_size


def engine_files(trt_engine: Path, towers: dict[str, Path]) -> dict[str, Path]:
    """Engine path per tower: ``x.engine`` -> ``x_vision.engine`` / ``x_text.engine`` for towers."""
    _, stem = artifact.tower_of(trt_engine)
    return {tower: artifact.tower_file(trt_engine.with_name(stem), tower, trt_engine.suffix) for tower in towers}


def onnx_input_shapes(path: Path) -> dict[str, list[int]]:
    """Input shapes of an ONNX file (``-1`` for symbolic axes), without loading its weights."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: [d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim]
            for i in graph.input}


def check_text_length(path: Path, shapes: dict[str, list[int]], deploy: dict) -> None:
    length = deploy["text"]["context_length"]
    for name in (INPUT_IDS, ATTENTION_MASK):
        if name in shapes and shapes[name][1] != length:
            raise ClipcoreError(f"{path.name}: input {name} has length {shapes[name][1]}, but the tokenizer in the "
                                f"sidecar pads to {length}", where=str(path),
                                fix="re-export the model: text inputs must have the tokenizer's length")


def build_engines(cfg) -> list[Path]:
    """Build one engine per model file of the export at ``gen_trt_engine.onnx_file``."""
    from deploy.tensorrt import unavailable

    g = cfg.gen_trt_engine
    if not g.onnx_file or not g.trt_engine:
        raise ConfigError("onnx_file and trt_engine must both be set", where="gen_trt_engine",
                          fix="set gen_trt_engine.onnx_file (an export or its base path) and gen_trt_engine.trt_engine")
    check(cfg)
    artifacts = artifact.locate(g.onnx_file, (".onnx",), key="gen_trt_engine.onnx_file")
    data_type = SECTION.of(cfg).data_type
    if data_type == "int8" and artifacts.deploy.get("precision", "fp32") == "fp16":
        raise ConfigError(f"{artifacts.config_path.name} is an fp16 export; an int8 engine needs the fp32 or int8 "
                          "export", where="gen_trt_engine.tensorrt.data_type",
                          fix="export again with export.precision = fp32 (or int8) and build from that")
    if data_type == "int8" and len(artifacts.files) == 1 and "combined" not in artifacts.files:
        raise ConfigError(f"an int8 engine is scored by retrieval on dataset.val, which needs both towers, and the "
                          f"export at {g.onnx_file} has only its {next(iter(artifacts.files))} tower",
                          where="gen_trt_engine.onnx_file", fix="put the export's other tower file beside it")
    shapes = {}
    for tower, path in artifacts.files.items():
        artifact.check_external_data(path, artifacts.deploy)
        shapes[tower] = onnx_input_shapes(path)
        check_text_length(path, shapes[tower], artifacts.deploy)
    profile = batch_profile(cfg)
    engines = engine_files(Path(g.trt_engine), artifacts.files)
    reason = unavailable()
    if reason:
        raise ClipcoreError(reason, where="gen_trt_engine", fix="run gen_trt_engine on a machine with a GPU and TensorRT")

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if g.verbose else trt.Logger.WARNING)
    out_dir = Path(g.trt_engine).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".trt-", dir=out_dir) as tmp:
        staged = {tower: Path(tmp) / engines[tower].name for tower in artifacts.files}
        for tower, onnx_path in artifacts.files.items():
            ranges = _int8_ranges(cfg, onnx_path, artifacts, engines[tower]) if data_type == "int8" else None
            staged[tower].write_bytes(_build(trt, logger, onnx_path, shapes[tower], profile, cfg, ranges))
            if data_type != "int8":
                static = [dims[0] for dims in shapes[tower].values() if dims[0] > 0]
                _verify(onnx_path, staged[tower], artifacts, static[0] if static else profile[1], data_type)
        gate = _int8_gate(cfg, artifacts, staged) if data_type == "int8" else None
        for tower, path in staged.items():
            path.replace(engines[tower])
    copy_sidecars(artifacts, engines, profile, data_type, gate)
    return list(engines.values())


def _int8_ranges(cfg, onnx_path: Path, artifacts: artifact.Artifacts, engine: Path) -> dict[str, float] | None:
    """Activation ranges for an fp32 export's int8 engine; ``None`` for an int8 export (its own scales)."""
    if artifacts.deploy.get("precision") == "int8":
        return None
    from deploy.tensorrt.calibration import activation_ranges, cache_file

    return activation_ranges(cfg, onnx_path, artifacts, cache_file(cfg, engine))


def _int8_gate(cfg, artifacts: artifact.Artifacts, staged: dict[str, Path]) -> dict:
    """:func:`core.accuracy_gate` of the staged int8 engines against the export they were built from."""
    import attrs

    from deploy.onnxruntime_runner import open_runner
    from deploy.runner import EmbeddingRunner
    from deploy.tensorrt.runner import TrtGraph

    engines = EmbeddingRunner(attrs.evolve(artifacts, files=dict(staged)), lambda file: TrtGraph(file, cfg.gen_trt_engine.gpu_id))
    export = open_runner(cfg.gen_trt_engine.onnx_file, providers=["CPUExecutionProvider"])
    # an int8 export was itself gated against fp32 at export: the two allowances add up
    return accuracy_gate(cfg, export, engines, "int8", key="gen_trt_engine.tensorrt.data_type",
                         reference_name=f"{artifacts.deploy.get('precision', 'fp32')} export")


def _build(trt, logger, onnx_path: Path, shapes: dict[str, list[int]], profile: tuple[int, int, int], cfg,
           ranges: dict[str, float] | None) -> bytes:
    """One serialised engine; ``ranges`` are int8 activation ranges (``None``: none, or QDQ scales)."""
    g, t = cfg.gen_trt_engine, SECTION.of(cfg)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path.resolve())):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ClipcoreError(f"TensorRT cannot parse {onnx_path.name}: {errors}", where=str(onnx_path),
                            fix="re-export with `core export` (opset 17) and keep its external-data file beside it")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, t.workspace_size << 20)
    dynamic = [network.get_input(i).name for i in range(network.num_inputs) if shapes[network.get_input(i).name][0] == -1]
    if dynamic:  # a static-batch export has nothing to profile
        opt_profile = builder.create_optimization_profile()
        for name in dynamic:
            opt_profile.set_shape(name, *[(b, *shapes[name][1:]) for b in profile])
        config.add_optimization_profile(opt_profile)
    if t.data_type in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if t.data_type == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if ranges:
                _set_ranges(network, ranges)
        _keep_fp32(trt, network)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    _layer_overrides(trt, network, t.layers_precision)
    cache_path = Path(g.timing_cache) if g.timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ClipcoreError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)",
                            where=str(onnx_path), fix="raise tensorrt.workspace_size or lower max_batch_size")
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _set_ranges(network, ranges: dict[str, float]) -> None:
    """Give every network tensor with a calibrated range its symmetric int8 range."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
    for tensor in tensors:
        if tensor.name in ranges and ranges[tensor.name] > 0:
            tensor.set_dynamic_range(-ranges[tensor.name], ranges[tensor.name])


def _float_outputs(trt, layer) -> bool:
    return all(layer.get_output(j).dtype in (trt.float32, trt.float16) for j in range(layer.num_outputs))


def _set_precision(trt, layer, dtype) -> None:
    layer.precision = dtype
    for j in range(layer.num_outputs):
        layer.set_output_type(j, dtype)


def _keep_fp32(trt, network) -> None:
    keep = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in keep and _float_outputs(trt, layer):
            _set_precision(trt, layer, trt.float32)


def _layer_overrides(trt, network, rules: list[str]) -> None:
    dtypes = {"fp32": trt.float32, "fp16": trt.float16}
    for rule in rules:
        pattern, _, precision = rule.rpartition(":")
        matched = [network.get_layer(i) for i in range(network.num_layers)
                   if fnmatch.fnmatchcase(network.get_layer(i).name, pattern)]
        if not matched:
            raise ConfigError(f"no layer matches {pattern!r}", where="gen_trt_engine.tensorrt.layers_precision",
                              fix="use fnmatch patterns over the layer names TensorRT prints with verbose = true")
        for layer in matched:
            if _float_outputs(trt, layer):
                _set_precision(trt, layer, dtypes[precision])


def sample_feeds(artifacts: artifact.Artifacts, shapes: dict[str, list[int]], batch: int) -> dict[str, np.ndarray]:
    """Inputs for the parity check: random images, real tokenised texts, an all-ones mask."""
    rng = np.random.default_rng(0)
    feeds = {}
    if IMAGE in shapes:
        feeds[IMAGE] = rng.standard_normal((batch, *shapes[IMAGE][1:]), dtype=np.float32)
    if INPUT_IDS in shapes:
        tokenize = SidecarTokenizer(artifacts.tokenizer_dir, artifacts.deploy["text"])
        feeds[INPUT_IDS] = tokenize([SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] for i in range(batch)])
    if ATTENTION_MASK in shapes:
        feeds[ATTENTION_MASK] = np.ones_like(feeds[INPUT_IDS])
    return feeds


def _verify(onnx_path: Path, engine_path: Path, artifacts: artifact.Artifacts, batch: int, data_type: str) -> None:
    """Refuse an engine whose embeddings drift from ONNX Runtime's."""
    from deploy.tensorrt.runner import TrtGraph

    reference = OrtGraph(onnx_path, ["CPUExecutionProvider"])
    engine = TrtGraph(engine_path)
    feeds = sample_feeds(artifacts, {k: list(v) for k, v in reference.input_shapes.items()}, batch)
    outputs = [o.name for o in reference.session.get_outputs() if o.name.endswith("_embedding")]
    want = reference.run(feeds, outputs)
    have = engine.run({k: v for k, v in feeds.items() if k in engine.input_shapes}, outputs)
    for name, a, b in zip(outputs, want, have):
        cosine = float(np.min(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))))
        print(f"{engine_path.name}: {name} cosine vs ONNX Runtime = {cosine:.6f} ({data_type})")
        if not cosine >= GATE_COSINE[data_type]:
            raise ClipcoreError(f"the {data_type} engine for {onnx_path.name} drifts from ONNX Runtime: {name} "
                                f"cosine {cosine:.5f} < {GATE_COSINE[data_type]}", where=str(onnx_path),
                                fix="build with tensorrt.data_type = fp32, or keep more layers in fp32 "
                                    "with tensorrt.layers_precision")


def copy_sidecars(artifacts: artifact.Artifacts, engines: dict[str, Path], profile: tuple[int, int, int],
                  data_type: str, gate: dict | None = None) -> None:
    """``<engine stem>_config.yaml`` (with a ``deploy.engine`` record, and the int8 ``precision_gate``)
    and ``<engine stem>_tokenizer/``."""
    _, stem = artifact.tower_of(next(iter(engines.values())))
    folder = next(iter(engines.values())).parent
    doc = yaml.safe_load(artifacts.config_path.read_text(encoding="utf-8"))
    doc["deploy"]["engine"] = {"builder": "tensorrt", "data_type": data_type, "batch_profile": list(profile),
                               "files": {tower: path.name for tower, path in engines.items()}}
    if gate:
        doc["deploy"]["engine"]["precision_gate"] = gate
    config = folder / (stem + artifact.CONFIG_SUFFIX)
    tmp = config.with_name(f".{config.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.replace(config)
    tokenizer = folder / (stem + artifact.TOKENIZER_SUFFIX)
    if tokenizer.resolve() != artifacts.tokenizer_dir.resolve():
        shutil.rmtree(tokenizer, ignore_errors=True)
        shutil.copytree(artifacts.tokenizer_dir, tokenizer)
