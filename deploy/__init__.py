"""Deploy-time runtimes: ONNX Runtime and TensorRT runners, and the TensorRT engine builder.

Everything here except :mod:`deploy.tensorrt` is importable without torch (numpy, onnxruntime,
tokenizers, pillow and pyyaml only), so a deployment image can leave torch out. Preprocessing and
tokenisation come from the export sidecars (``<stem>_config.yaml``, ``<stem>_tokenizer/``) alone.
"""
