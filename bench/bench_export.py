"""CPU embedding throughput: the exported model in ONNX Runtime (the deploy runner) vs PyTorch
eager, same weights, same inputs, same thread count, in one run.

    python bench/bench_export.py                                # clipcore-demo-tiny
    python bench/bench_export.py --type ViT-L-14-SigLIP-CLIPA-84 --images 16 --texts 64
    python bench/bench_export.py --type siglip2-so400m-patch14-224 --images 8 --texts 32 --batch 4

Weights are random (``model.pretrained = false``): throughput does not depend on them. Images
are fed preprocessed (``[N, 3, H, W]`` arrays) to both, so the figure is model compute only;
texts go through each side's own tokenizer (PyTorch: the backbone's; ONNX Runtime: the exported
``_tokenizer/`` with the sidecar rules). The four measurements (PyTorch and ONNX Runtime, images
and texts) alternate over ``--rounds`` rounds after a warm-up (``bench/protocol.py``); the figures
are median items/s and the median per-round ORT/PyTorch ratio with its min–max.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import protocol
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rate(fn, n: int):
    """A round of ``fn()`` (which processes ``n`` items): ``{"rate": items per second}``."""
    def one_round() -> dict[str, float]:
        start = time.perf_counter()
        fn()
        return {"rate": n / (time.perf_counter() - start)}
    return one_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--type", default="clipcore-demo-tiny", help="model.type (random weights)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)

    from core.runtime.build import build_model
    from core.spec.config import ExperimentConfig
    from deploy.onnxruntime_runner import open_runner
    from exporters.onnx.export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ExperimentConfig()
    cfg.model.type, cfg.model.pretrained = args.type, False
    model = build_model(cfg).float().eval()
    pre = model.preprocess
    images = torch.randn(args.images, 3, pre.height, pre.width)
    words = "a photo of two red cubes and a small blue sphere on the left of a green table".split()
    texts = [" ".join(words[: 4 + i % (len(words) - 4)]) for i in range(args.texts)]

    with tempfile.TemporaryDirectory() as tmp:
        cfg.export.onnx_file, cfg.export.encoder_type = str(Path(tmp) / "model.onnx"), "separate"
        start = time.perf_counter()
        export_onnx(model, cfg)
        export_s = time.perf_counter() - start
        runner = open_runner(Path(tmp) / "model.onnx", providers=["CPUExecutionProvider"],
                             batch_size=args.batch, threads=args.threads)

        def torch_images():
            with torch.inference_mode():
                for chunk in images.split(args.batch):
                    model.encode_image(chunk, normalize=True)

        def torch_texts():
            with torch.inference_mode():
                for start in range(0, len(texts), args.batch):
                    model.encode_text(model.tokenizer(texts[start:start + args.batch]), normalize=True)

        arrays = images.numpy()
        variants = {
            "images eager": rate(torch_images, args.images),
            "images ort": rate(lambda: runner.encode_images(arrays), args.images),
            "texts eager": rate(torch_texts, args.texts),
            "texts ort": rate(lambda: runner.encode_texts(texts), args.texts),
        }
        for warm_up in variants.values():
            warm_up()
        rounds.run(variants)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.type}: {params:.1f} M parameters, {pre.height}x{pre.width}, L={model.tokenizer.spec.context_length}, "
          f"batch {args.batch}, {args.threads} threads, export {export_s:.1f} s (torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__})")
    for name in ("images", "texts"):
        eager, ort = rounds.median(f"{name} eager", "rate"), rounds.median(f"{name} ort", "rate")
        print(f"  {name + '/s':9s} PyTorch eager {eager:9.1f}   ONNX Runtime {ort:9.1f}   "
              f"ORT/eager {rounds.ratio(f'{name} ort', f'{name} eager', 'rate')}")
    print(rounds.footer())


if __name__ == "__main__":
    main()
