"""The runtime-independent half of a deploy-time runner (implements :class:`core.exporter.Runner`).

A runtime (ONNX Runtime, TensorRT) supplies one :class:`Graph` per model file; this module does
the rest from the sidecars: preprocessing, tokenisation, batching to the graph's batch range,
running only the tower a call needs, and shape checks with clear messages. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from PIL import Image

from core import ClipcoreError, SidecarTokenizer, artifact, preprocess_images

IMAGE, INPUT_IDS, ATTENTION_MASK = "image", "input_ids", "attention_mask"
OUTPUTS = {"vision": "image_embedding", "text": "text_embedding"}
DEFAULT_BATCH = 32


class Graph(Protocol):
    """One loaded model file.

    ``input_shapes`` maps each input the graph takes to its shape (``-1`` for a dynamic axis);
    ``batch_range`` is the ``(min, max)`` batch one run accepts; ``run(feeds, outputs)`` returns
    the named outputs for inputs with batch size inside that range.
    """

    input_shapes: dict[str, tuple[int, ...]]
    batch_range: tuple[int, int | None]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]: ...


class EmbeddingRunner:
    """Embeddings from a deployed model; graphs are opened lazily, one per tower a call needs.

    ``open_graph(path) -> Graph`` opens a model file. ``batch_size`` caps the batch of one run
    (the graph's maximum, else :data:`DEFAULT_BATCH`).
    """

    def __init__(self, artifacts: artifact.Artifacts, open_graph: Callable[[Path], Graph], *, batch_size: int | None = None):
        self.artifacts = artifacts
        self.deploy = artifacts.deploy
        self._open_graph = open_graph
        self._graphs: dict[str, Graph] = {}
        self._tokenizer: SidecarTokenizer | None = None
        self._batch_size = batch_size
        files = artifacts.files
        self.has_vision = "combined" in files or "vision" in files
        self.has_text = "combined" in files or "text" in files
        self.logit_scale = float(self.deploy["logit_scale"]["exp"])  # the multiplier exp(log-space scale)
        self.logit_bias = float(self.deploy["logit_bias"])
        self.embed_dim = int(self.deploy["embed_dim"])
        self.classifier = self.deploy.get("classifier")  # the sidecar's classifier (export.classifier), if any

    # -- the Runner protocol ---------------------------------------------------------------
    @property
    def max_batch(self) -> int | None:
        tower = "combined" if "combined" in self.artifacts.files else next(iter(self.artifacts.files))
        return self._graph(tower).batch_range[1]

    def encode_images(self, images: np.ndarray | Sequence[str | Path | Image.Image]) -> np.ndarray:
        """L2-normalised ``[N, D]`` float32 embeddings of preprocessed ``[N, 3, H, W]`` float32
        arrays, or of image paths / PIL images preprocessed from the sidecar."""
        return self._run_images(images, OUTPUTS["vision"], self.embed_dim)

    def classify(self, images: np.ndarray | Sequence[str | Path | Image.Image],
                 top_k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per image, ``(class name, probability)`` pairs, most probable first, from the classifier
        exported with the model (``export.classifier``; calibrated if it was). Softmax: the
        ``top_k`` classes (all when ``None``). Sigmoid: the classes at or above their calibrated
        threshold (every class with a probability when it has none), at most ``top_k``."""
        if not self.classifier:
            raise ClipcoreError("this export has no classifier", where=str(self.artifacts.config_path),
                                fix="export with export.classifier set to a probe head or a calibrated classifier")
        names = self.classifier["class_names"]
        probs = self._run_images(images, "probabilities", len(names))
        thresholds = self.classifier.get("thresholds") or [None] * len(names)
        sigmoid = self.classifier["scoring"] == "sigmoid"
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")
            keep = [(names[c], float(row[c])) for c in order
                    if not sigmoid or thresholds[c] is None or row[c] >= thresholds[c]]
            out.append(keep[:top_k] if top_k else keep)
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised ``[N, D]`` float32 embeddings of texts, tokenised from the sidecars."""
        tokenize = self.tokenizer
        texts = list(texts)
        return self._run_chunks("text", len(texts), lambda s: {INPUT_IDS: tokenize(texts[s])}, OUTPUTS["text"],
                                self.embed_dim)

    # -- internals ---------------------------------------------------------------------------
    def _run_images(self, images, output: str, width: int) -> np.ndarray:
        spec = self.deploy["preprocess"]
        if not isinstance(images, np.ndarray):
            return self._run_chunks("vision", len(images), lambda s: {IMAGE: preprocess_images(images[s], spec)},
                                    output, width)
        expected = (3, spec["height"], spec["width"])
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ClipcoreError(f"images have shape {tuple(images.shape)}, the model takes [N, {', '.join(map(str, expected))}]",
                                where=str(self.artifacts.base),
                                fix="preprocess images to the exported input size, or pass image paths")
        images = np.ascontiguousarray(images, dtype=np.float32)
        return self._run_chunks("vision", len(images), lambda s: {IMAGE: images[s]}, output, width)

    @property
    def tokenizer(self) -> SidecarTokenizer:
        if self._tokenizer is None:
            self._tokenizer = SidecarTokenizer(self.artifacts.tokenizer_dir, self.deploy["text"])
        return self._tokenizer

    def _tower(self, modality: str) -> str:
        files = self.artifacts.files
        if modality in files:
            return modality
        if "combined" in files:
            return "combined"
        other = "text" if modality == "vision" else "vision"
        raise ClipcoreError(f"this deployment has no {modality} tower: only {files[other].name} was found",
                            where=str(files[other]),
                            fix=f"put {self.artifacts.base.name}_{modality}{files[other].suffix} beside it, "
                                "or export with encoder_type = combined")

    def _graph(self, tower: str) -> Graph:
        if tower not in self._graphs:
            graph = self._open_graph(self.artifacts.files[tower])
            self._check_inputs(tower, graph)
            self._graphs[tower] = graph
        return self._graphs[tower]

    def _check_inputs(self, tower: str, graph: Graph) -> None:
        where = str(self.artifacts.files[tower])
        length = int(self.deploy["text"]["context_length"])
        for name in (INPUT_IDS, ATTENTION_MASK):
            shape = graph.input_shapes.get(name)
            if shape is not None and shape[1] != length:
                raise ClipcoreError(
                    f"the model's {name} input has length {shape[1]} but its tokenizer pads to {length}",
                    where=where, fix="rebuild the model from an export whose sidecars belong to it "
                                     "(text inputs have the tokenizer's context_length)")
        pre = self.deploy["preprocess"]
        shape = graph.input_shapes.get(IMAGE)
        if shape is not None and tuple(shape[1:]) != (3, pre["height"], pre["width"]):
            raise ClipcoreError(f"the model's image input is {list(shape)} but its sidecar preprocesses to "
                                f"3x{pre['height']}x{pre['width']}", where=where,
                                fix="use the sidecars written with this model")

    def _feeds(self, graph: Graph, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Add the inputs a graph takes but this call does not use: the ignored attention mask
        (all ones) and, for a combined graph, the other tower's input (zeros)."""
        out = {}
        for name, shape in graph.input_shapes.items():
            if name in feeds:
                out[name] = feeds[name]
            elif name == ATTENTION_MASK and INPUT_IDS in feeds:
                out[name] = np.ones_like(feeds[INPUT_IDS])
            else:
                dtype = np.float32 if name == IMAGE else np.int64
                out[name] = np.zeros((n, *shape[1:]), dtype=dtype)
        return out

    def _run_chunks(self, modality: str, n: int, make_feeds: Callable[[slice], dict[str, np.ndarray]],
                    output: str, width: int) -> np.ndarray:
        graph = self._graph(self._tower(modality))
        low, high = graph.batch_range
        step = self._batch_size or high or DEFAULT_BATCH
        if high is not None:
            step = min(step, high)
        result = np.empty((n, width), dtype=np.float32)
        for start in range(0, n, step):
            chunk = slice(start, min(start + step, n))
            feeds = make_feeds(chunk)
            rows = chunk.stop - chunk.start
            if rows < low:  # pad to the graph's minimum batch (a static batch or a TRT profile)
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], low - rows, axis=0)]) for k, v in feeds.items()}
            batch = max(rows, low)
            (values,) = graph.run(self._feeds(graph, feeds, batch), [output])
            result[chunk] = values[:rows]
        return result
