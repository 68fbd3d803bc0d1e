"""Where the RADIO checkpoint and the teacher text tower are: a configured local path, else the
Hugging Face cache, else (unless ``HF_HUB_OFFLINE``) the hub. A miss names the exact files needed
and every place looked."""

from __future__ import annotations

from pathlib import Path

from core import ClipcoreError, hf_cache_dir, load_hf, looks_like_path, missing_weights_error

from backbones.radio.sizes import RadioSize, TextTowerSpec

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
SIGLIP_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                "tokenizer*", "special_tokens_map.json", "spiece.model"]


def radio_checkpoint(size: RadioSize, pretrained: bool | str) -> Path:
    """The ``.pth.tar`` for ``model.pretrained`` (``True``: the size's published file; a path; a hub id)."""
    if isinstance(pretrained, str) and looks_like_path(pretrained):
        path = Path(pretrained).expanduser()
        return path / size.hub_file if path.is_dir() else path
    from huggingface_hub import hf_hub_download

    repo = size.hf_repo if pretrained is True else str(pretrained)
    looked: list[str] = []
    found = load_hf(lambda src, **kw: hf_hub_download(src, size.hub_file, **kw), repo, looked)
    if found is None:
        raise missing_weights_error(size.model_type, looked, [
            f"download {size.hub_file} once with network access (`huggingface-cli download {size.hf_repo} "
            f"{size.hub_file}`) into the Hugging Face cache ({hf_cache_dir()}), then run with HF_HUB_OFFLINE=1",
            f"set model.pretrained = \"/path/to/{size.hub_file}\""])
    return Path(found)


def text_tower(spec: TextTowerSpec, configured: str | None, *, model_type: str, adaptor: str) -> Path:
    """The teacher text tower: a SigLIP2 model directory (``siglip``) or an open_clip weights file (``clip``)."""
    looked: list[str] = []
    if configured:
        found = _local(spec, Path(configured).expanduser(), looked)
    else:
        found = _siglip_from_hub(spec, looked) if spec.kind == "siglip" else _clip_from_hub(spec, looked)
    if found is not None:
        return found
    needed = ("its Hugging Face directory (config.json, model.safetensors, tokenizer files)" if spec.kind == "siglip"
              else f"its open_clip weights ({' or '.join(OPEN_CLIP_FILES)})")
    raise ClipcoreError(
        f"the {adaptor!r} adaptor of {model_type} needs the text tower of its teacher {spec.hf_repo}: "
        f"{needed}; looked in: " + "; ".join(looked), where="model.radio.text_tower",
        fix=f"download it once with network access (`huggingface-cli download {spec.hf_repo}`) into the Hugging "
            f"Face cache ({hf_cache_dir()}), or set model.radio.text_tower to the downloaded "
            + ("directory" if spec.kind == "siglip" else "file or its directory"))


def _local(spec: TextTowerSpec, path: Path, looked: list[str]) -> Path | None:
    if spec.kind == "siglip":
        if (path / "config.json").is_file():
            return path
        looked.append(f"{path} (no config.json there)")
        return None
    if path.is_file():
        return path
    for name in OPEN_CLIP_FILES:
        if (path / name).is_file():
            return path / name
    looked.append(f"{path} (no {' / '.join(OPEN_CLIP_FILES)} there)")
    return None


def _siglip_from_hub(spec: TextTowerSpec, looked: list[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    found = load_hf(lambda src, **kw: snapshot_download(src, allow_patterns=SIGLIP_FILES, **kw), spec.hf_repo, looked)
    return _local(spec, Path(found), looked) if found else None


def _clip_from_hub(spec: TextTowerSpec, looked: list[str]) -> Path | None:
    from huggingface_hub import hf_hub_download

    for name in OPEN_CLIP_FILES:
        found = load_hf(lambda src, **kw: hf_hub_download(src, name, **kw), spec.hf_repo, looked)
        if found:
            return Path(found)
    return None
