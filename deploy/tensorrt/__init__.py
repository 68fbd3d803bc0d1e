"""The ``tensorrt`` engine-builder plugin: ``core gen_trt_engine`` and ``trt_engine`` runners.

Needs the optional extra ``clipcore[trt]`` and a CUDA GPU; :func:`unavailable` says which is
missing, and every input check (sidecars, external data, text length) runs before that, so bad
input gets its own message on any machine.
"""

from __future__ import annotations

from core import EngineBuilder, hookimpl, lazy
from deploy.tensorrt.config import SECTION, check

SUFFIXES = (".engine", ".plan", ".trt")


def unavailable() -> str | None:
    """Why engines cannot be built or run here, or ``None``."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); install it with `pip install clipcore[trt]` on a CUDA machine"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and none is visible (torch.cuda.is_available() is false)"
    return None


@hookimpl
def register_engine_builders(register):
    register(EngineBuilder(name="tensorrt", unavailable=unavailable, build=lazy("deploy.tensorrt.builder:build_engines"),
                           suffixes=SUFFIXES, open_runner=lazy("deploy.tensorrt.runner:open_runner"),
                           check=check, config_sections=(SECTION,),
                           description="TensorRT engines (fp32 | fp16 with fp32 LayerNorm/Softmax) + runner"))
