"""The experiment spec: every section and field of TAO's CLIP spec (same names, same defaults
unless noted), plus clipcore's own fields, as attrs classes.

Each field carries ``metadata["help"]`` (its meaning and valid values); ``core get-spec`` writes
it as a comment and ``--help`` shows it. Loading, overrides and error messages live in
``core.spec``; this module only declares the schema.

Fields TAO declares but never uses (``peft``, ``regularization``, ``wandb``, ``encryption_key``)
are left out on purpose: clipcore has no inert keys.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import field


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its documentation."""
    if isinstance(default, (list, dict)):
        value = default
        return field(factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def section(cls: type, help: str) -> Any:
    """A nested config section."""
    return field(factory=cls, metadata={"help": help})


def entries(cls: type, help: str) -> Any:
    """A list of tables (``[[dataset.train.datasets]]``)."""
    return field(factory=list, metadata={"help": help, "item_type": cls})


spec = attrs.define(kw_only=True, slots=True)


# --------------------------------------------------------------------------- model
@spec
class ModelConfig:
    type: str = opt("siglip2-so400m-patch16-256",
                    "Model type; `core plugins` lists every registered type.")
    adaptor_name: str | None = opt(None, "RADIO only: the text adaptor, `siglip` or `clip`.")
    pretrained: bool | str = opt(
        True, "true: the type's published weights (HF cache, HF_HOME mirror or hub); false: random "
              "init; a string: a local directory/file, a Hugging Face id or an open_clip pretrained tag.")
    freeze_vision_encoder: bool = opt(False, "Freeze the image tower (no grad, no optimizer state, eval mode).")
    freeze_text_encoder: bool = opt(False, "Freeze the text tower (no grad, no optimizer state, eval mode).")
    vision_unlocked_layers: int = opt(
        0, "With freeze_vision_encoder: keep the last N blocks of the image tower trainable (LiT-style).")
    text_unlocked_layers: int = opt(
        0, "With freeze_text_encoder: keep the last N blocks of the text tower trainable.")
    image_size: int = opt(256, "Training/eval image size for families whose checkpoint does not fix it "
                               "(RADIO, OpenCLIP); fixed-resolution SigLIP2 uses its own.")
    init_logit_scale: float | None = opt(
        None, "Initial logit scale (log space) for models started from scratch; unset: ln 10 for "
              "siglip loss, ln(1/0.07) for clip. Pretrained weights keep their learned value.")
    init_logit_bias: float | None = opt(
        None, "Initial logit bias for models started from scratch; unset: -10 for siglip loss, 0 for clip.")
    canonicalize_text: bool | None = opt(
        None, "Canonicalize captions (big_vision: `_`->space, strip punctuation, lower-case, collapse "
              "spaces); unset: the family's default (on for SigLIP2).")


# --------------------------------------------------------------------------- train
@spec
class CudnnConfig:
    benchmark: bool = opt(False, "torch.backends.cudnn.benchmark.")
    deterministic: bool = opt(True, "torch.backends.cudnn.deterministic.")


@spec
class OptimConfig:
    optimizer_type: Literal["adamw", "lamb"] = opt("adamw", "Optimizer: adamw | lamb.")
    vision_lr: float = opt(1e-4, "Learning rate of the image tower.")
    text_lr: float = opt(1e-4, "Learning rate of the text tower and of logit scale/bias.")
    weight_decay: float = opt(1e-4, "Weight decay (not applied to biases, norms, 1-D and logit parameters).")
    betas: list[float] = opt([0.9, 0.95], "Adam betas [beta1, beta2].")
    eps: float = opt(1e-6, "Adam epsilon.")
    warmup_steps: int = opt(100, "Linear warmup steps.")
    scheduler: Literal["cosine", "linear", "constant"] = opt(
        "cosine", "Schedule after warmup over the exact total step count: cosine | linear | constant.")


@spec
class TrainConfig:
    num_epochs: int = opt(10, "Number of epochs (>= 1).")
    num_gpus: int = opt(1, "GPUs (processes) per node; > 1 launches torchrun.")
    gpu_ids: list[int] = opt([0], "GPU ids to use.")
    num_nodes: int = opt(1, "Number of nodes.")
    seed: int = opt(1234, "Random seed (< 0 disables seeding).")
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN flags.")
    checkpoint_interval: int = opt(1, "Save a checkpoint every N epochs (or steps, see checkpoint_interval_unit).")
    checkpoint_interval_unit: Literal["epoch", "step"] = opt("epoch", "Unit of checkpoint_interval: epoch | step.")
    validation_interval: int = opt(1, "Validate every N epochs (<= num_epochs).")
    val_check_interval: int | None = opt(None, "Validate every N steps instead (wins over validation_interval).")
    resume_training_checkpoint_path: str | None = opt(
        None, "Resume from this checkpoint, or `auto` for the latest in results_dir.")
    pretrained_model_path: str | None = opt(None, "Start from a clipcore checkpoint's weights only.")
    loss_type: str = opt("siglip", "Loss plugin: siglip | clip (or any registered loss).")
    precision: Literal["fp32", "bf16", "fp16"] = opt(
        "bf16", "Training precision: fp32 | bf16 | fp16 (TAO default fp16; clipcore bf16).")
    grad_clip_norm: float | None = opt(None, "Clip the global gradient norm to this value.")
    grad_checkpointing: bool = opt(False, "Activation (gradient) checkpointing.")
    distributed_strategy: Literal["ddp", "fsdp"] = opt("ddp", "ddp | fsdp (FSDP2 fully_shard per block).")
    accum_steps: int = opt(1, "Exact contrastive gradient accumulation over N micro-batches.")
    keep_last: int | None = opt(None, "Keep only the last N epoch/step checkpoints (latest and best are kept).")
    best_metric: str = opt("val/t2i_mAP", "Validation metric that selects the `best` checkpoint.")
    log_every_n_steps: int = opt(10, "Log training metrics every N steps.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/train.")
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.")


# --------------------------------------------------------------------------- dataset
@spec
class DatasetEntry:
    image_dir: str = opt(None, "Folder (or .tar/.tar.gz) of images, searched recursively.")
    image_list_file: str | None = opt(None, "File listing images relative to image_dir, one per line.")
    caption_dir: str | None = opt(None, "Folder (or .tar/.tar.gz) of captions; unset: beside the images.")
    caption_file_suffix: str = opt(".txt", "Caption file = <image stem><suffix>.")
    caption_mode: Literal["file", "lines"] = opt(
        "file", "file: the whole file is one caption; lines: each non-empty line is a caption.")


@spec
class WdsConfig:
    root_dir: str | None = opt(None, "Folder searched recursively for *.tar shards.")
    shard_list_file: str | None = opt(None, "File with one shard per line (brace expansion, URLs).")
    samples_per_shard: int = opt(10000, "Samples per shard; defines the epoch length.")


@spec
class TrainDataConfig:
    type: str = opt("custom", "Dataset format plugin: custom | wds (or any registered format).")
    datasets: list[DatasetEntry] = entries(DatasetEntry, "Image-caption datasets, concatenated.")
    wds: WdsConfig = section(WdsConfig, "WebDataset shards (type = wds).")
    batch_size: int = opt(16, "Batch size per GPU.")
    num_workers: int = opt(8, "Data loader worker processes.")


@spec
class ValDataConfig:
    type: str = opt("custom", "Dataset format plugin for validation and evaluate (must support retrieval).")
    datasets: list[DatasetEntry] = entries(DatasetEntry, "Validation datasets (custom format).")
    batch_size: int = opt(16, "Batch size per GPU.")
    num_workers: int = opt(8, "Data loader worker processes.")


@spec
class AugmentationConfig:
    scale: list[float] = opt([0.4, 1.0], "RandomResizedCrop scale range; [1, 1] disables.")
    color_jitter: list[float] = opt(
        [0.8, 0.32, 0.32, 0.32, 0.08],
        "[prob, brightness, contrast, saturation, hue]; the 4-element legacy form means prob 0.8; [] disables.")
    grayscale: float = opt(0.2, "Probability of converting to grayscale.")


@spec
class DatasetConfig:
    seed: int = opt(42, "Data shuffling seed.")
    pin_memory: bool = opt(True, "Pin host memory for faster GPU transfer.")
    on_bad_sample: Literal["skip", "error"] = opt(
        "skip", "skip: skip and record in bad_samples.jsonl; error: stop at the first bad sample.")
    max_image_pixels: int = opt(178956970, "Refuse images with more pixels (decompression bombs).")
    train: TrainDataConfig = section(TrainDataConfig, "Training data.")
    val: ValDataConfig = section(ValDataConfig, "Validation data.")
    augmentation: AugmentationConfig = section(AugmentationConfig, "Training augmentation.")


# --------------------------------------------------------------------------- evaluate / inference
@spec
class InferenceEntry:
    image_dir: str = opt(None, "Folder of images, searched recursively.")


@spec
class EvalConfig:
    checkpoint: str | None = opt(None, "clipcore checkpoint; unset: the pretrained weights.")
    onnx_file: str | None = opt(None, "Run an exported ONNX model (ONNX Runtime) instead of a checkpoint.")
    trt_engine: str | None = opt(None, "Run a TensorRT engine instead of a checkpoint.")
    datasets: list[InferenceEntry] = entries(InferenceEntry, "Inference image folders.")
    text_file: str | None = opt(None, "Inference prompts, one per line.")
    batch_size: int = opt(16, "Batch size per GPU.")
    num_workers: int = opt(8, "Data loader worker processes.")
    num_gpus: int = opt(1, "GPUs (processes).")
    gpu_ids: list[int] = opt([0], "GPU ids to use.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/<action>.")


# --------------------------------------------------------------------------- export / TensorRT
@spec
class ExportConfig:
    checkpoint: str | None = opt(None, "clipcore checkpoint; unset: the pretrained weights.")
    onnx_file: str | None = opt(None, "Output ONNX path; separate inserts _vision/_text before .onnx.")
    encoder_type: Literal["combined", "separate"] = opt("combined", "combined | separate.")
    opset_version: int = opt(17, "ONNX opset (>= 11).")
    batch_size: int = opt(-1, "Static batch size, or -1 for a dynamic batch axis.")
    input_height: int = opt(256, "Image height (>= 32); must match the backbone.")
    input_width: int = opt(256, "Image width (>= 32); must match the backbone.")
    input_channel: int = opt(3, "Image channels.")
    attention_mask_input: bool = opt(
        True, "Keep TAO's deprecated `attention_mask` graph input (values ignored).")
    force: bool = opt(False, "Overwrite existing output files.")
    gpu_id: int = opt(0, "GPU used for export.")
    on_cpu: bool = opt(False, "Export on CPU.")
    verbose: bool = opt(False, "Verbose exporter output.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/export.")


@spec
class TensorRTConfig:
    workspace_size: int = opt(1024, "Builder workspace in MB.")
    data_type: Literal["fp32", "fp16"] = opt("fp32", "Engine precision: fp32 | fp16 (LayerNorm/Softmax kept fp32).")
    min_batch_size: int = opt(1, "Profile minimum batch.")
    opt_batch_size: int = opt(1, "Profile optimal batch.")
    max_batch_size: int = opt(16, "Profile maximum batch.")
    layers_precision: list[str] = opt([], "Per-layer precision overrides, `name:fp32`.")


@spec
class GenTrtEngineConfig:
    onnx_file: str | None = opt(None, "ONNX file, or the base path of a separate export.")
    trt_engine: str | None = opt(None, "Output engine path.")
    batch_size: int = opt(-1, "Static batch, or -1 to use the tensorrt profile.")
    timing_cache: str | None = opt(None, "Timing cache file (read and updated).")
    gpu_id: int = opt(0, "GPU used for the build.")
    verbose: bool = opt(False, "Verbose builder log.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/gen_trt_engine.")
    tensorrt: TensorRTConfig = section(TensorRTConfig, "TensorRT builder settings.")


# --------------------------------------------------------------------------- root
@spec
class ExperimentConfig:
    results_dir: str = opt("results", "Root output folder; each action writes to <results_dir>/<action>.")
    model_name: str = opt("clip", "Kept for TAO compatibility.")
    model: ModelConfig = section(ModelConfig, "The model.")
    train: TrainConfig = section(TrainConfig, "Training.")
    dataset: DatasetConfig = section(DatasetConfig, "Data.")
    evaluate: EvalConfig = section(EvalConfig, "Evaluation (retrieval metrics on dataset.val).")
    inference: EvalConfig = section(EvalConfig, "Embedding inference (HDF5 output).")
    export: ExportConfig = section(ExportConfig, "ONNX export.")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, "TensorRT engine build.")
    plugins: dict[str, Any] = field(
        factory=dict, metadata={"help": "Plugin-owned sections, keyed by their dotted path "
                                        "(e.g. `model.radio`), validated by the plugin that declares them."})
