"""The experiment spec: every section and field of TAO's CLIP spec (same names, same defaults
unless noted), plus clipcore's own fields, as attrs classes.

Each field carries ``metadata["help"]`` (its meaning and valid values); ``core get-spec`` writes
it as a comment and ``--help`` shows it. Valid ranges are :class:`Rule` validators (checked at
construction and on assignment, raising :class:`InvalidValue`); a field without a default is
required. Loading, overrides and error messages live in ``core.spec.load``; this module only declares
the schema.

Fields TAO declares that clipcore does not implement (``encryption_key``) are left out: clipcore
has no inert keys. TAO's W&B table belongs to the W&B logger plugin (``train.<its name>``).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
from attrs import field

from core.batching import MATCH_KINDS
from core.data import DatasetEntry
from core.fields import Rule, above, at_least, each_at_least, entries, opt, section

PROBABILITY = Rule(lambda v: 0 <= v <= 1, "a probability in [0, 1]", {"minimum": 0, "maximum": 1})
FRACTION = Rule(lambda v: 0 < v < 1, "a fraction in (0, 1)", {"exclusiveMinimum": 0, "exclusiveMaximum": 1})
BATCH_OR_DYNAMIC = Rule(lambda v: v == -1 or v >= 1, "-1 (dynamic batch) or >= 1",
                        {"anyOf": [{"const": -1}, {"minimum": 1}]})
MIN_IMAGE_SIDE = at_least(32)
SCALE_RANGE = Rule(lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
                   "an ordered pair [min, max] with 0 < min <= max <= 1",
                   {"minItems": 2, "maxItems": 2, "items": {"exclusiveMinimum": 0, "maximum": 1}})
MATCH_LIST = Rule(lambda v: len(set(v)) == len(v) and set(v) <= set(MATCH_KINDS),
                  "distinct items of " + ", ".join(MATCH_KINDS), {"uniqueItems": True, "items": {"enum": list(MATCH_KINDS)}})
BETAS = Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "[beta1, beta2], each in [0, 1)",
             {"minItems": 2, "maxItems": 2, "items": {"minimum": 0, "exclusiveMaximum": 1}})
COLOR_JITTER = Rule(
    lambda v: len(v) in (0, 4, 5) and all(x >= 0 for x in v) and (len(v) != 5 or v[0] <= 1)
    and (not v or v[-1] <= 0.5),
    "[] (off), [brightness, contrast, saturation, hue] or [prob, brightness, contrast, saturation, "
    "hue]; all >= 0, prob <= 1, hue <= 0.5",
    {"items": {"minimum": 0}, "anyOf": [{"maxItems": 0}, {"minItems": 4, "maxItems": 5}]})


spec = attrs.define(kw_only=True, slots=True)


# --------------------------------------------------------------------------- model
@spec
class PeftTowerConfig:
    enabled: bool = opt(True, "Adapt this tower (when model.peft.enabled).")
    target_modules: list[str] = opt(
        [], "Module names (last name component) to adapt inside the chosen blocks; empty: the family's "
            "defaults (`core plugins` shows them; e.g. q_proj/k_proj/v_proj/out_proj, or qkv/proj).")
    num_last_blocks: int = opt(3, "Adapt the last N transformer blocks of the tower; 0: all.", validator=at_least(0))
    rank: int = opt(8, "LoRA rank r.", validator=at_least(1))
    alpha: float = opt(16.0, "LoRA alpha (the update is scaled by alpha / rank).", validator=above(0))
    dropout: float = opt(0.05, "Dropout on the adapter's input.", validator=PROBABILITY)


@spec
class PeftConfig:
    enabled: bool = opt(False, "Train low-rank adapters (peft) instead of the full towers; only the adapters and "
                               "the logit scale / bias train, and export merges the adapters into the weights.")
    method: Literal["lora", "dora"] = opt("lora", "Adapter type: lora | dora (weight-decomposed LoRA).")
    vision: PeftTowerConfig = section(PeftTowerConfig, "Adapters of the image tower.")
    text: PeftTowerConfig = section(PeftTowerConfig, "Adapters of the text tower.")


@spec
class RegularizationConfig:
    enabled: bool = opt(False, "Keep the model close to a frozen copy of the starting model (the teacher): losses "
                               "on its embeddings and on its image-text similarity structure, against forgetting.")
    embedding_mse_weight: float = opt(0.05, "Weight of the mean squared error between the normalised embeddings "
                                            "and the teacher's.", validator=at_least(0))
    cosine_weight: float = opt(0.05, "Weight of 1 - cosine(embedding, teacher embedding).", validator=at_least(0))
    similarity_weight: float = opt(0.10, "Weight of the mean squared error between the image-text cosine "
                                         "similarities and the teacher's, over the global batch.",
                                   validator=at_least(0))


@spec
class ModelConfig:
    type: str = opt("siglip2-so400m-patch16-256",
                    "Model type; `core plugins` lists every registered type.")
    adaptor_name: str | None = opt(None, "The text adaptor, for families that offer several (`core plugins` shows which); other "
                                         "families refuse it.")
    pretrained: bool | str = opt(
        True, "true: the type's published weights (HF cache, HF_HOME mirror or hub); false: random "
              "init; a string: a local directory/file, a Hugging Face id or an open_clip pretrained tag.")
    freeze_vision_encoder: bool = opt(False, "Freeze the image tower (no grad, no optimizer state, eval mode).")
    freeze_text_encoder: bool = opt(False, "Freeze the text tower (no grad, no optimizer state, eval mode).")
    vision_unlocked_layers: int = opt(
        0, "With freeze_vision_encoder: keep the last N blocks of the image tower trainable (LiT-style).",
        validator=at_least(0))
    text_unlocked_layers: int = opt(
        0, "With freeze_text_encoder: keep the last N blocks of the text tower trainable.",
        validator=at_least(0))
    image_size: int = opt(256, "Training/eval image size for families whose checkpoint does not fix it; "
                               "fixed-resolution families use their own.",
                               validator=MIN_IMAGE_SIDE)
    init_logit_scale: float | None = opt(
        None, "Initial logit scale (log space) for models started from scratch; unset: the loss's "
              "(train.loss_type). Pretrained weights keep their learned value.")
    init_logit_bias: float | None = opt(
        None, "Initial logit bias for models started from scratch; unset: the loss's (none for losses "
              "without a bias).")
    canonicalize_text: bool | None = opt(
        None, "Canonicalize captions (big_vision: `_`->space, strip punctuation, lower-case, collapse "
              "spaces); unset: the family's default.")
    peft: PeftConfig = section(PeftConfig, "Parameter-efficient fine-tuning (LoRA / DoRA through peft), TAO's fields.")
    regularization: RegularizationConfig = section(
        RegularizationConfig, "The forgetting regularizer: losses against a frozen copy of the starting model, TAO's fields.")
    tokenizer_path: str | None = opt(
        None, "A local Hugging Face tokenizer directory (tokenizer.json ...); unset: the one beside the "
              "weights (the model directory, or a `tokenizer/` folder next to a weights file), else the "
              "HF cache.")


# --------------------------------------------------------------------------- train
@spec
class CudnnConfig:
    benchmark: bool = opt(False, "torch.backends.cudnn.benchmark.")
    deterministic: bool = opt(True, "torch.backends.cudnn.deterministic.")


@spec
class OptimConfig:
    optimizer_type: Literal["adamw", "lamb"] = opt("adamw", "Optimizer: adamw | lamb.")
    vision_lr: float = opt(1e-4, "Learning rate of the image tower.", validator=at_least(0))
    text_lr: float = opt(1e-4, "Learning rate of the text tower and of logit scale/bias.",
                         validator=at_least(0))
    weight_decay: float = opt(1e-4, "Weight decay (not applied to biases, norms, 1-D and logit parameters).",
                              validator=at_least(0))
    betas: list[float] = opt([0.9, 0.95], "Adam betas [beta1, beta2].", validator=BETAS)
    eps: float = opt(1e-6, "Adam epsilon.", validator=above(0))
    warmup_steps: int = opt(100, "Linear warmup steps.", validator=at_least(0))
    scheduler: Literal["cosine", "linear", "constant"] = opt(
        "cosine", "Schedule after warmup over the exact total step count: cosine | linear | constant.")


@spec
class TrainConfig:
    num_epochs: int = opt(10, "Number of epochs (>= 1).", validator=at_least(1))
    num_gpus: int = opt(1, "GPUs (processes) per node; > 1 launches torchrun.", validator=at_least(1))
    gpu_ids: list[int] = opt([0], "GPU ids to use.", validator=each_at_least(0))
    num_nodes: int = opt(1, "Number of nodes (each runs the same command; MASTER_ADDR / MASTER_PORT name node "
                            "0's rendezvous endpoint).", validator=at_least(1))
    rdzv_timeout: int = opt(600, "Seconds a node waits for the others to join (num_nodes > 1) before it stops "
                                 "with an error.", validator=at_least(1))
    max_restarts: int = opt(0, "Restart all workers up to N times after a worker fails (torchrun --max-restarts); "
                               'with resume_training_checkpoint_path = "auto" they resume from latest.pth.',
                            validator=at_least(0))
    seed: int = opt(1234, "Random seed (< 0 disables seeding).")
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN flags.")
    checkpoint_interval: int = opt(1, "Save a checkpoint every N epochs (or steps, see checkpoint_interval_unit).",
                                   validator=at_least(1))
    checkpoint_interval_unit: Literal["epoch", "step"] = opt("epoch", "Unit of checkpoint_interval: epoch | step.")
    validation_interval: int = opt(1, "Validate every N epochs (<= num_epochs).", validator=at_least(1))
    val_check_interval: int | None = opt(None, "Validate every N steps instead (wins over validation_interval).",
                                         validator=at_least(1))
    resume_training_checkpoint_path: str | None = opt(
        None, "Resume from this checkpoint, or `auto` for the latest in results_dir.")
    pretrained_model_path: str | None = opt(None, "Start from a clipcore checkpoint's weights only.")
    loss_type: str = opt("siglip", "Loss plugin (`core plugins` lists the registered losses).")
    compatible_positives: list[str] = opt(
        list(MATCH_KINDS), "Pairs never pushed apart as negatives: the same image, identical caption text, the same "
        "user group (a dataset format's group ids); [] = only each pair itself (TAO 7.0).", validator=MATCH_LIST)
    precision: Literal["fp32", "bf16", "fp16"] = opt(
        "bf16", "Training precision: fp32 | bf16 | fp16 (TAO default fp16; clipcore bf16).")
    grad_clip_norm: float | None = opt(None, "Clip the global gradient norm to this value.",
                                       validator=above(0))
    grad_checkpointing: bool = opt(False, "Activation (gradient) checkpointing.")
    compile: bool = opt(False, "torch.compile each transformer block of both towers (before DDP / FSDP2 wrapping); "
                               "where it cannot work (no C++ compiler for the CPU backend, ...) training runs eager "
                               "after a warning saying why.")
    distributed_strategy: Literal["ddp", "fsdp"] = opt("ddp", "ddp | fsdp (FSDP2 fully_shard per block).")
    accum_steps: int = opt(1, "Exact contrastive gradient accumulation over N micro-batches.",
                           validator=at_least(1))
    keep_last: int | None = opt(None, "Keep only the last N epoch/step checkpoints (latest and best are kept).",
                                validator=at_least(1))
    best_metric: str = opt("val/t2i_mAP", "Validation metric that selects the `best` checkpoint.")
    reference_metric: str = opt("ref/t2i_R@1", "The guard-set metric reference_max_drop bounds.")
    reference_max_drop: float | None = opt(
        None, "With dataset.reference: a checkpoint is `best` only while reference_metric stays within this drop "
              "of its value before training (e.g. 0.01 = one point).", validator=at_least(0))
    log_every_n_steps: int = opt(10, "Log training metrics every N steps.", validator=at_least(1))
    loggers: list[str] | None = opt(None, "Experiment loggers, rank 0 only (`core plugins` lists them); unset: "
                                          "those on by default. metrics.jsonl is always written.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/train.")
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.")


# --------------------------------------------------------------------------- dataset
@spec
class TrainDataConfig:
    type: str = opt("custom", "Dataset format plugin (`core plugins` lists the registered formats).")
    datasets: list[DatasetEntry] = entries(DatasetEntry, "Image-caption datasets, concatenated.")
    batch_size: int = opt(16, "Batch size per GPU.", validator=at_least(1))
    num_workers: int = opt(8, "Data loader worker processes.", validator=at_least(0))


@spec
class ValDataConfig:
    type: str = opt("custom", "Dataset format plugin for validation and evaluate (must support retrieval).")
    datasets: list[DatasetEntry] = entries(DatasetEntry, "Validation datasets (custom format).")
    batch_size: int = opt(16, "Batch size per GPU.", validator=at_least(1))
    num_workers: int = opt(8, "Data loader worker processes.", validator=at_least(0))


@spec
class ReferenceConfig(ValDataConfig):
    """The guard set: a retrieval set like ``dataset.val`` (what the model should keep knowing), and/or a
    zero-shot classification folder."""

    classification_dir: str | None = opt(
        None, "A reference zero-shot classification folder (one sub-folder of images per class).")
    class_names_file: str | None = opt(None, "Class names of classification_dir, one per line.")


@spec
class AugmentationConfig:
    scale: list[float] = opt([0.4, 1.0], "RandomResizedCrop scale range; [1, 1] disables.",
                             validator=SCALE_RANGE)
    color_jitter: list[float] = opt(
        [0.8, 0.32, 0.32, 0.32, 0.08],
        "[prob, brightness, contrast, saturation, hue]; the 4-element legacy form means prob 0.8; [] disables.",
        validator=COLOR_JITTER)
    grayscale: float = opt(0.2, "Probability of converting to grayscale.", validator=PROBABILITY)


@spec
class DatasetConfig:
    seed: int = opt(42, "Data shuffling seed.")
    pin_memory: bool = opt(True, "Pin host memory for faster GPU transfer.")
    on_bad_sample: Literal["skip", "error"] = opt(
        "skip", "skip: skip and record in bad_samples.jsonl; error: stop at the first bad sample.")
    max_image_pixels: int = opt(178956970, "Refuse images with more pixels (decompression bombs).",
                                validator=at_least(1))
    cache_dir: str | None = opt(
        None, "Local cache of data read from URLs (s3://, gs://, https://, ...): archives, list files and folders "
              "are fetched once and checked against the store (size, ETag) at every run; unset: "
              "$XDG_CACHE_HOME/clipcore/data (~/.cache/clipcore/data).")
    cache_size_gb: float = opt(
        100.0, "Size limit of the data cache: least recently used entries no process uses are removed beyond "
               "it; a custom-format archive larger than it is read in place (a .tar by range requests).",
        validator=above(0.0))
    storage_options: dict[str, Any] = field(factory=dict, metadata={
        "help": "Options for the filesystem of every data URL (fsspec storage_options, e.g. endpoint_url, "
                "profile or anon for s3://). Keep secrets out: the spec is copied into checkpoints, export "
                "sidecars and tracker runs; credentials come from the store's standard environment and files."})
    train: TrainDataConfig = section(TrainDataConfig, "Training data.")
    val: ValDataConfig = section(ValDataConfig, "Validation data.")
    reference: ReferenceConfig = section(
        ReferenceConfig, "The guard set: evaluated at every validation (ref/* metrics, and once before training), "
                         "to see what fine-tuning costs the model elsewhere.")
    augmentation: AugmentationConfig = section(AugmentationConfig, "Training augmentation.")


# --------------------------------------------------------------------------- evaluate / inference
@spec
class InferenceEntry:
    image_dir: str = field(metadata={"help": "Folder of images, searched recursively."})


@spec
class EncoderRunConfig:
    """The fields every embedding action shares: which weights to run, and how."""

    checkpoint: str | None = opt(None, "clipcore checkpoint; unset: the pretrained weights.")
    onnx_file: str | None = opt(None, "Run an exported ONNX model (ONNX Runtime) instead of a checkpoint.")
    trt_engine: str | None = opt(None, "Run an inference engine (built by `core gen_trt_engine`) instead of a checkpoint.")
    batch_size: int = opt(16, "Batch size per GPU.", validator=at_least(1))
    num_workers: int = opt(8, "Data loader worker processes.", validator=at_least(0))
    num_gpus: int = opt(1, "GPUs (processes).", validator=at_least(1))
    gpu_ids: list[int] = opt([0], "GPU ids to use.", validator=each_at_least(0))
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/<action>.")


@spec
class EvalConfig(EncoderRunConfig):
    datasets: list[InferenceEntry] = entries(InferenceEntry, "Inference image folders.")
    text_file: str | None = opt(None, "Inference prompts, one per line.")


@spec
class InferenceConfig(EvalConfig):
    """``inference``: the shared fields, plus object embeddings from detections."""

    detections: str | None = opt(
        None, "Detections to embed (COCO JSON: images, annotations with bbox [x, y, w, h], optional category_id, "
              "score, instance_id / track_id): each box is cropped and embedded into object_embeddings.h5.",
        path="file")
    detections_image_dir: str | None = opt(
        None, "Folder the detections' file_name values are relative to; unset: the JSON file's folder.", path="dir")
    crop_margin: float = opt(0.1, "Context around each box: it grows by this share of its width on the left and "
                                  "right and of its height at the top and bottom.", validator=at_least(0.0))
    crop_shape: Literal["square", "box"] = opt(
        "square", "square: grow the crop's shorter side to the longer (no distortion by the model's resize) | "
                  "box: keep the box's aspect.")
    min_score: float = opt(0.0, "Leave out detections scoring below this (detections without a score are kept).")
    features: Literal["embedding", "patch"] = opt(
        "embedding", "embedding: the image embeddings (TAO's output) | patch: also each image's per-patch features "
                     "from one vision block (patch_features in image_embeddings.h5; needs the PyTorch model, "
                     "not onnx_file / trt_engine). Size: grid height x width x block width x 4 bytes per image, "
                     "e.g. 14x14x768 = 0.6 MB for a ViT-B/16 at 224.")
    patch_block: int = opt(-1, "features = patch: the vision block whose output is written (negative: from the end).")
    patch_layout: Literal["NHWC", "NLC"] = opt("NHWC", "features = patch: [N, H', W', C] maps | [N, H'*W', C] tokens.")
    patch_norm: bool = opt(True, "features = patch: apply the vision tower's final norm to the block output (what "
                                 "its last layer sees) | false: the raw block output.")


PROMPT_TEMPLATES = Rule(lambda v: all(isinstance(t, str) and t.count("{}") == 1 for t in v),
                        'prompts containing "{}" exactly once, where the class name goes',
                        {"items": {"pattern": r"^(?:(?!\{\})[\s\S])*\{\}(?:(?!\{\})[\s\S])*$"}})


@spec
class EvaluateConfig(EvalConfig):
    """``evaluate``: the shared fields plus zero-shot classification (evaluate only)."""

    tie_policy: Literal["expected", "pessimistic"] = opt(
        "expected", "Tied scores in retrieval and classification metrics (also for validation during training): "
                    "expected = the expected value over a random order of the tied items (CLIP_benchmark's numbers "
                    "when nothing ties, chance level for a collapsed model) | pessimistic = tied negatives first.")
    classification_dir: str | None = opt(
        None, "Zero-shot classification set: a folder with one sub-folder of images per class "
              "(ImageFolder layout); top-1/top-5 and per-class accuracy go into results.json.")
    class_names_file: str | None = opt(
        None, "Class names, one per line in the sorted order of the class folders; unset: the folder "
              "names with `_` read as spaces.")
    templates: list[str] = opt(
        [], 'Prompt templates, "{}" standing for the class name (e.g. "a photo of a {}."); a class\'s '
            "text embedding is the normalised mean over templates. Empty: clipcore's default set.",
        validator=PROMPT_TEMPLATES)
    reid_query: str | None = opt(
        None, "Re-identification: query objects, an object_embeddings.h5 of `core inference` (boxes with instance "
              "ids); CMC rank-1/5/10 and mAP go into results.json.", path="file")
    reid_gallery: str | None = opt(
        None, "Re-identification gallery (same kind of file); unset: each query against all the other queries.",
        path="file")


# --------------------------------------------------------------------------- linear probe
@spec
class LinearProbeConfig(EncoderRunConfig):
    """``linear_probe``: a logistic-regression head on frozen image embeddings of class folders."""

    train_dir: str | None = opt(None, "Training images: one sub-folder of images per class (ImageFolder layout).",
                                path="dir")
    val_dir: str | None = opt(None, "Validation images (same layout), used to choose the regularisation; "
                                    "unset: val_fraction of each class of train_dir, drawn with split_seed.",
                              path="dir")
    test_dir: str | None = opt(None, "Test images (same layout), where the results are measured; unset: "
                                     "test_fraction of each class of train_dir, drawn with split_seed.", path="dir")
    val_fraction: float = opt(0.2, "Share of each class held out for validation when val_dir is unset.",
                              validator=FRACTION)
    test_fraction: float = opt(0.2, "Share of each class held out for testing when test_dir is unset.",
                               validator=FRACTION)
    split_seed: int = opt(0, "Seed of the held-out draws and of the k-shot samples.")
    class_names_file: str | None = opt(
        None, "Class names, one per line in the sorted order of the class folders; unset: the folder "
              "names with `_` read as spaces.", path="file")
    templates: list[str] = opt([], 'Prompt templates of the zero-shot classifier ("{}" is the class name); '
                                   "empty: clipcore's default set.", validator=PROMPT_TEMPLATES)
    init: Literal["random", "zeroshot"] = opt(
        "random", "random: the CLIP paper's probe (weights regularised towards zero) | zeroshot: start from, and "
                  "regularise towards, the zero-shot classifier of the class prompts (better with few examples).")
    shots: int = opt(0, "k-shot protocol: train on k images per class, over shot_seeds draws, and report "
                        "mean ± std; 0: every training image.", validator=at_least(0))
    shot_seeds: int = opt(5, "Draws of the k-shot training set (shots > 0).", validator=at_least(1))
    max_iter: int = opt(1000, "L-BFGS iterations per fit.", validator=at_least(1))
    cache_dir: str | None = opt(None, "Feature cache (HDF5 per split, reused while the model and the images are "
                                      "unchanged); unset: <results_dir>/linear_probe/features.")


@spec
class CalibrateConfig(EncoderRunConfig):
    """``calibrate``: calibrated probabilities for a classifier, fitted on a calibration split."""

    classifier: str | None = opt(
        None, "Classifier to calibrate: the probe_head.pt of `core linear-probe` (or an earlier calibration); "
              "unset: the zero-shot classifier of the class prompts.", path="file")
    val_dir: str | None = opt(None, "Calibration images: one sub-folder per class (ImageFolder; the classifier's "
                                    "class folder names).", path="dir")
    test_dir: str | None = opt(None, "Images (same layout) where the calibration is measured; unset: measured on "
                                     "val_dir itself.", path="dir")
    scoring: Literal["softmax", "sigmoid"] = opt(
        "softmax", "softmax: one class per image (temperature scaling) | sigmoid: multi-label, SigLIP-style "
                   "(temperature, and a per-class threshold for target_precision).")
    target_precision: float = opt(0.9, "Precision each class's threshold must reach (sigmoid).", validator=FRACTION)
    bins: int = opt(15, "Probability bins of the ECE and the reliability diagram.", validator=at_least(2))
    class_names_file: str | None = opt(
        None, "Class names for the zero-shot classifier, one per line in folder order; unset: folder names.",
        path="file")
    templates: list[str] = opt([], 'Prompt templates of the zero-shot classifier ("{}" is the class name); '
                                   "empty: clipcore's default set.", validator=PROMPT_TEMPLATES)


# --------------------------------------------------------------------------- export / engines
@spec
class ExportConfig:
    checkpoint: str | None = opt(None, "clipcore checkpoint; unset: the pretrained weights.")
    onnx_file: str | None = opt(None, "Output ONNX path; separate inserts _vision/_text before .onnx.")
    encoder_type: Literal["combined", "separate"] = opt("combined", "combined | separate.")
    opset_version: int = opt(17, "ONNX opset (>= 11).", validator=at_least(11))
    batch_size: int = opt(-1, "Static batch size, or -1 for a dynamic batch axis.",
                          validator=BATCH_OR_DYNAMIC)
    input_height: int = opt(256, "Image height (>= 32); must match the backbone.", validator=MIN_IMAGE_SIDE)
    input_width: int = opt(256, "Image width (>= 32); must match the backbone.", validator=MIN_IMAGE_SIDE)
    input_channel: int = opt(3, "Image channels.", validator=at_least(1))
    attention_mask_input: bool = opt(
        True, "Keep TAO's deprecated `attention_mask` graph input (values ignored).")
    classifier: str | None = opt(
        None, "A classifier file (`core linear-probe` / `core calibrate`) to export with the image graph: it then "
              "also outputs logits and probabilities, and the sidecar names the classes.", path="file")
    precision: Literal["fp32", "fp16", "int8"] = opt(
        "fp32", "fp32 | fp16 (LayerNorm, Softmax and the final normalisation stay fp32) | int8 (static "
                "quantization, per-channel weights, calibrated on calibration_images training images); the exporter "
                "must support it. A reduced precision is scored on dataset.val against fp32 and refused (no model "
                "file written) when it fails the gate: max_recall_drop, min_cosine.")
    calibration_images: int = opt(256, "int8: training images (dataset.train) the activation ranges are calibrated "
                                       "on.", validator=at_least(1))
    max_recall_drop: float = opt(1.0, "Gate: the most R@1 (image-to-text or text-to-image, on dataset.val) a "
                                      "reduced precision may lose, in points.", validator=at_least(0.0))
    min_cosine: float = opt(0.99, "Gate: the lowest cosine allowed between a reduced-precision embedding and the "
                                  "fp32 model's, over dataset.val's images and captions.",
                            validator=Rule(lambda v: 0 < v <= 1, "in (0, 1]", {"exclusiveMinimum": 0, "maximum": 1}))
    force: bool = opt(False, "Overwrite existing output files.")
    gpu_id: int = opt(0, "GPU used for export.", validator=at_least(0))
    on_cpu: bool = opt(False, "Export on CPU.")
    verbose: bool = opt(False, "Verbose exporter output.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/export.")


@spec
class GenTrtEngineConfig:
    onnx_file: str | None = opt(None, "ONNX file, or the base path of a separate export.")
    trt_engine: str | None = opt(None, "Output engine path.")
    batch_size: int = opt(-1, "Static batch, or -1 to use the engine builder's batch profile.", validator=BATCH_OR_DYNAMIC)
    timing_cache: str | None = opt(None, "Timing cache file (read and updated).")
    gpu_id: int = opt(0, "GPU used for the build.", validator=at_least(0))
    verbose: bool = opt(False, "Verbose builder log.")
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/gen_trt_engine.")


@spec
class HpoParam:
    """One searched field: ``[hpo.params."train.optim.vision_lr"]``."""

    type: Literal["float", "int", "categorical"] = opt("float", "float | int | categorical.")
    low: float | None = opt(None, "Lowest value (float, int).")
    high: float | None = opt(None, "Highest value, included (float, int).")
    log: bool = opt(False, "Sample on a log scale (float, int).")
    step: float | None = opt(None, "Grid step (float, int; needed by the grid sampler).")
    choices: list[Any] = opt([], "The values to choose from (categorical).")


@spec
class HpoConfig:
    metric: str = opt("val/t2i_mAP", "Validation metric the search optimises (reported at every validation).")
    direction: Literal["maximize", "minimize"] = opt("maximize", "maximize | minimize the metric.")
    n_trials: int = opt(20, "Trials the study holds in total (finished or pruned); running again adds the missing ones.",
                        validator=at_least(1))
    timeout: float | None = opt(None, "Stop starting trials after this many seconds.", validator=above(0))
    sampler: Literal["tpe", "random", "grid", "cmaes"] = opt("tpe", "Optuna sampler: tpe | random | grid | cmaes.")
    pruner: Literal["median", "hyperband", "none"] = opt(
        "median", "Stop unpromising trials between validations: median | hyperband | none.")
    parallel: int = opt(1, "Trials run at once (each gets its own devices, or its share of the CPU cores).",
                        validator=at_least(1))
    storage: str | None = opt(None, "Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file "
                                    "(*.log); unset: sqlite in <results_dir>/hpo/study.db.")
    study_name: str = opt("clipcore", "Study name in the storage.")
    seed: int = opt(0, "Sampler seed.")
    keep_checkpoints: bool = opt(False, "Keep every trial's checkpoints (default: only the best trial's).")
    params: dict[str, HpoParam] = field(factory=dict, metadata={
        "help": 'The search space: one [hpo.params."<dotted.field>"] table per searched spec field.'})
    results_dir: str | None = opt(None, "Output folder of this action; unset: <results_dir>/hpo.")


# --------------------------------------------------------------------------- root
@spec
class ExperimentConfig:
    results_dir: str = opt("results", "Root output folder; each action writes to <results_dir>/<action>.")
    model_name: str = opt("clip", "Kept for TAO compatibility.")
    model: ModelConfig = section(ModelConfig, "The model.")
    train: TrainConfig = section(TrainConfig, "Training.")
    dataset: DatasetConfig = section(DatasetConfig, "Data.")
    evaluate: EvaluateConfig = section(
        EvaluateConfig, "Evaluation (retrieval metrics on dataset.val, zero-shot classification).")
    inference: InferenceConfig = section(InferenceConfig, "Embedding inference (HDF5 output).")
    export: ExportConfig = section(ExportConfig, "ONNX export.")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, "Inference-engine build (the engine-builder plugin of trt_engine's suffix).")
    linear_probe: LinearProbeConfig = section(
        LinearProbeConfig, "Linear probe on frozen image embeddings (`core linear-probe`).")
    calibrate: CalibrateConfig = section(
        CalibrateConfig, "Calibrated classifier probabilities (`core calibrate`).")
    hpo: HpoConfig = section(HpoConfig, "Hyper-parameter search over spec fields (`core hpo`, on Optuna).")
    plugins: dict[str, Any] = field(
        factory=dict, metadata={"help": "Plugin-owned sections, keyed by their dotted path "
                                        "(e.g. `model.mine`), validated by the plugin that declares them."})
