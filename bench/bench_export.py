"""CPU embedding throughput: the exported model in ONNX Runtime (the deploy runner) vs PyTorch
eager, same weights, same inputs, same thread count, in one run; with ``--precisions``, one
export per ``export.precision`` and its R@1 on the demo validation set.

    python bench/bench_export.py                                # clipcore-demo-tiny
    python bench/bench_export.py --precisions fp32,fp16,int8 --checkpoint demo/results/train/latest.pth
    python bench/bench_export.py --type ViT-L-14-SigLIP-CLIPA-84 --images 16 --texts 64
    python bench/bench_export.py --type siglip2-so400m-patch14-224 --images 8 --texts 32 --batch 4

Weights are random (``model.pretrained = false``) unless ``--checkpoint``: throughput does not
depend on them, R@1 does. Each reduced precision goes through ``core export``'s accuracy gate on
``--data``'s val split (``core demo-data``; int8 is calibrated on its train split); the bench
reports the gate's R@1 and the drop against fp32 instead of refusing (max_recall_drop = 100). Images
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
    parser.add_argument("--precisions", default="fp32", help="export.precision values, comma-separated")
    parser.add_argument("--checkpoint", help="clipcore checkpoint of --type (default: random weights)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/bench-export-data"),
                        help="core demo-data folder (made when missing): the gate's val set, int8's calibration")
    parser.add_argument("--val", type=int, default=500, help="validation pairs when --data is made (default 500)")
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)

    import yaml

    from core.cli.demo_data import generate
    from core.runtime.build import build_model
    from core.spec.load import load_config
    from deploy.onnxruntime_runner import open_runner
    from exporters.onnx.export import export_onnx

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not (args.data / "dataset.toml").is_file():
        generate(args.data, n=512, val=args.val, seed=0, class_images=0, detection_frames=0, force=True)
    cfg = load_config(args.data / "dataset.toml", [f"model.type={args.type}", "model.pretrained=false",
                                                   "export.max_recall_drop=100", "export.min_cosine=1e-6"])
    model = build_model(cfg, args.checkpoint).float().eval()
    pre = model.preprocess
    cfg.export.input_height, cfg.export.input_width = pre.height, pre.width
    precisions = args.precisions.split(",")
    images = torch.randn(args.images, 3, pre.height, pre.width)
    words = "a photo of two red cubes and a small blue sphere on the left of a green table".split()
    texts = [" ".join(words[: 4 + i % (len(words) - 4)]) for i in range(args.texts)]

    with tempfile.TemporaryDirectory() as tmp:
        runners, gates, export_s = {}, {}, {}
        for precision in precisions:
            cfg.export.onnx_file, cfg.export.encoder_type = str(Path(tmp) / precision / "model.onnx"), "separate"
            cfg.export.precision = precision
            start = time.perf_counter()
            export_onnx(model, cfg)
            export_s[precision] = time.perf_counter() - start
            sidecar = yaml.safe_load((Path(tmp) / precision / "model_config.yaml").read_text())["deploy"]
            gates[precision] = sidecar.get("precision_gate")
            runners[precision] = open_runner(Path(tmp) / precision / "model.onnx", providers=["CPUExecutionProvider"],
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
        variants = {"images eager": rate(torch_images, args.images), "texts eager": rate(torch_texts, args.texts)}
        for precision, runner in runners.items():
            variants[f"images {precision}"] = rate(lambda r=runner: r.encode_images(arrays), args.images)
            variants[f"texts {precision}"] = rate(lambda r=runner: r.encode_texts(texts), args.texts)
        for warm_up in variants.values():
            warm_up()
        rounds.run(variants)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"{args.type}: {params:.1f} M parameters, {pre.height}x{pre.width}, L={model.tokenizer.spec.context_length}, "
          f"batch {args.batch}, {args.threads} threads, export " + ", ".join(f"{p} {t:.1f} s" for p, t in export_s.items())
          + f" (torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__})")
    fp32 = next((g["fp32"] for g in gates.values() if g), None)
    print("| runtime | images/s | × eager | texts/s | × eager | t2i R@1 (Δ points) | i2t R@1 (Δ points) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| PyTorch eager | {rounds.median('images eager', 'rate'):.1f} | 1 | {rounds.median('texts eager', 'rate'):.1f} | 1 | "
          + " | ".join(f"{100 * fp32[k]:.1f}" if fp32 else "n/a" for k in ("t2i_R@1", "i2t_R@1")) + " |")
    for precision in precisions:
        gate = gates[precision]
        recall = [f"{100 * gate[precision][k]:.1f} ({-gate['recall_drop_points'][k]:+.1f})" if gate
                  else (f"{100 * fp32[k]:.1f} (0)" if fp32 else "n/a") for k in ("t2i_R@1", "i2t_R@1")]
        print(f"| ORT {precision} | {rounds.median(f'images {precision}', 'rate'):.1f} | "
              f"{rounds.ratio(f'images {precision}', 'images eager', 'rate')} | "
              f"{rounds.median(f'texts {precision}', 'rate'):.1f} | "
              f"{rounds.ratio(f'texts {precision}', 'texts eager', 'rate')} | {recall[0]} | {recall[1]} |")
    print(rounds.footer())


if __name__ == "__main__":
    main()
