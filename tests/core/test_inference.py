"""`core inference` (HDF5 layout, alignment with skipped images, atomic writes, several folders,
ranks) and `core search` end to end, on the `color-clip` test backbone whose embeddings are known."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from core.cli.main import main
from core.eval.index import EmbeddingFile, exact_top_k


def unit(color_clip, color: str) -> np.ndarray:
    v = np.array(color_clip.colors[color], np.float32) / 127.5 - 1
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, color_clip) -> dict[str, Path]:
    """Two image folders (nested, mixed-case suffixes, a .gif, an unreadable file in the middle,
    a non-image file) and a prompt file with blank lines."""
    root = tmp_path_factory.mktemp("inputs")
    a, b = root / "a", root / "b"
    color_clip.image(a / "1_red.png", "red")
    (a / "2_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    color_clip.image(a / "3_blue.JPG", "blue")
    color_clip.image(a / "deeper" / "4_green.gif", "green")
    (a / "notes.txt").write_text("not an image")
    color_clip.image(b / "5_yellow.webp", "yellow")
    color_clip.image(b / "6_red.bmp", "red")
    prompts = root / "prompts.txt"
    prompts.write_text("a red square\n\n   \n  a blue one  \nsomething green\n")
    return {"a": a, "b": b, "prompts": prompts}


def spec_for(color_clip, tmp_path: Path, folders: dict[str, Path], *, images=("a", "b"), text=True) -> Path:
    body = "".join(f'\n[[inference.datasets]]\nimage_dir = "{folders[k]}"\n' for k in images)
    spec = color_clip.write_spec(tmp_path / "spec.toml", tmp_path / "results", body)
    if text:
        spec.write_text(spec.read_text().replace("[inference]\n", f'[inference]\ntext_file = "{folders["prompts"]}"\n'))
    return spec


EXPECTED_IMAGES = [("a/1_red.png", "red"), ("a/3_blue.JPG", "blue"), ("a/deeper/4_green.gif", "green"),
                   ("b/5_yellow.webp", "yellow"), ("b/6_red.bmp", "red")]


def check_image_file(color_clip, path: Path, folders) -> None:
    with h5py.File(path, "r") as f:
        assert set(f) == {"embeddings", "image_paths"}
        emb = f["embeddings"]
        assert emb.dtype == np.float32 and emb.compression == "gzip" and emb.compression_opts == 4
        assert f.attrs["num_images"] == 5 and f.attrs["embedding_dim"] == 3 and f.attrs["embedding_type"] == "image"
        assert f.attrs["model_type"] == "color-clip" and "[inference]" in f.attrs["config"]
        paths = list(f["image_paths"].asstr()[:])
        # the unreadable 2_broken.jpg is gone and every row still matches its path
        assert paths == [str(folders[rel.split("/")[0]] / rel.split("/", 1)[1]) for rel, _ in EXPECTED_IMAGES]
        # lossy formats (JPEG, WebP) shift colours slightly; other colours are > 1 away
        np.testing.assert_allclose(emb[:], np.stack([unit(color_clip, c) for _, c in EXPECTED_IMAGES]), atol=0.05)


def test_inference_writes_tao_layout_with_aligned_rows(folders, tmp_path, color_clip):
    """Both folders land in one file (TAO's TRT path keeps only the last); checkpoint unset means
    the pretrained weights (TAO crashes there)."""
    assert main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders))]) == 0
    out = tmp_path / "results" / "inference"
    check_image_file(color_clip, out / "image_embeddings.h5", folders)
    with h5py.File(out / "text_embeddings.h5", "r") as f:
        assert set(f) == {"embeddings", "texts"}
        assert list(f["texts"].asstr()[:]) == ["a red square", "a blue one", "something green"]
        assert (f.attrs["num_texts"], f.attrs["embedding_dim"], f.attrs["embedding_type"]) == (3, 3, "text")
        np.testing.assert_allclose(f["embeddings"][:], np.stack([unit(color_clip, c) for c in ("red", "blue", "green")]), atol=1e-6)
    bad = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(b["path"]).name, b["reason"]) for b in bad] == [("2_broken.jpg", "corrupt-image")]
    assert sorted(p.name for p in out.iterdir()) == ["image_embeddings.h5", "skipped.jsonl", "text_embeddings.h5"]


def test_only_texts_and_nothing_to_embed(folders, tmp_path, capsys, color_clip):
    assert main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders, images=()))]) == 0
    assert sorted(p.name for p in (tmp_path / "results" / "inference").iterdir()) == ["text_embeddings.h5"]
    code = main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders, images=(), text=False))])
    assert code == 2 and ("nothing to embed: inference.datasets, inference.text_file and inference.detections "
                          "are unset") in capsys.readouterr().err
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    code = main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders, images=())), f"inference.text_file={blank}"])
    assert code == 2 and "has no prompts (every line is blank)" in capsys.readouterr().err


def test_a_failed_run_leaves_no_file(folders, tmp_path, monkeypatch, capsys, color_clip):
    """Rows go to a temporary file renamed at the end: a crash midway leaves nothing behind."""
    from core.eval.embed import ModelEncoder

    calls = {"n": 0}
    real = ModelEncoder.encode_images

    def fail_second_batch(self, items):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real(self, items)

    monkeypatch.setattr(ModelEncoder, "encode_images", fail_second_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders, text=False))])
    out = tmp_path / "results" / "inference"
    assert not [p for p in out.iterdir() if p.suffix in (".h5", ".tmp")]


def test_on_bad_sample_error_stops(folders, tmp_path, capsys, color_clip):
    code = main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders, text=False)), "dataset.on_bad_sample=error"])
    err = capsys.readouterr().err
    assert code == 2 and "2_broken.jpg" in err and "corrupt-image" in err


@pytest.mark.distributed
def test_two_processes_write_one_file_in_order(folders, tmp_path, monkeypatch, capfd, color_clip):
    for name, value in color_clip.env().items():
        monkeypatch.setenv(name, value)
    code = main(["inference", "-c", str(spec_for(color_clip, tmp_path, folders)), "-g", "2"])
    assert code == 0, capfd.readouterr().err[-3000:]
    out = tmp_path / "results" / "inference"
    check_image_file(color_clip, out / "image_embeddings.h5", folders)
    with h5py.File(out / "text_embeddings.h5", "r") as f:
        assert list(f["texts"].asstr()[:]) == ["a red square", "a blue one", "something green"]
    assert not list(out.glob(".*"))  # the rank parts are gone


# --------------------------------------------------------------------------- search
@pytest.fixture(scope="module")
def embedded(folders, tmp_path_factory, color_clip) -> Path:
    tmp = tmp_path_factory.mktemp("search")
    assert main(["inference", "-c", str(spec_for(color_clip, tmp, folders))]) == 0
    return tmp / "results" / "inference"


def table_rows(output: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 3 and cells[0].isdigit():
            rows.append(tuple(cells))
    return rows


def test_search_text_and_image_queries(embedded, folders, capsys, monkeypatch, color_clip):
    monkeypatch.setenv("COLUMNS", "400")  # whole paths on one line, however deep the temporary folder
    h5 = str(embedded / "image_embeddings.h5")
    assert main(["search", "--images", h5, "a red car", "-k", "2"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [(r, s, Path(p).name) for r, s, p in rows] == [("1", "1.0000", "1_red.png"), ("2", "1.0000", "6_red.bmp")]
    query = color_clip.image(folders["a"].parent / "query_blue.png", "blue")
    assert main(["search", "--images", h5, "--image", str(query), "green", "-k", "1"]) == 0
    rows = table_rows(capsys.readouterr().out)
    assert [Path(p).name for _, _, p in rows] == ["4_green.gif", "3_blue.JPG"]  # text queries first


def test_search_bad_input(embedded, tmp_path, capsys):
    h5 = str(embedded / "image_embeddings.h5")
    code = main(["search", "--images", str(embedded / "text_embeddings.h5"), "red"])
    assert code == 2 and "is not an image or object embedding file (embedding_type 'text')" in capsys.readouterr().err
    code = main(["search", "--images", h5])
    assert code == 2 and "no query given" in capsys.readouterr().err
    code = main(["search", "--images", h5, "red", "--image", str(tmp_path / "missing.png")])
    assert code == 2 and "cannot read the query image" in capsys.readouterr().err
    code = main(["search", "--images", h5, "red", "-o", "model.type=example-tiny", "-o", "model.pretrained=false"])
    assert code == 2 and "randomly initialised model" in capsys.readouterr().err
    with h5py.File(tmp_path / "tao.h5", "w") as f:  # a file without the record clipcore writes
        f["embeddings"], f["image_paths"] = np.eye(3, dtype=np.float32), ["x", "y", "z"]
        f.attrs["embedding_type"] = "image"
    code = main(["search", "--images", str(tmp_path / "tao.h5"), "red"])
    assert code == 2 and "does not record the model that wrote it" in capsys.readouterr().err


def test_top_k_streams_blocks_and_breaks_ties_by_row(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb[30] = emb[7]  # an exact tie: the lower row ranks first
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["embeddings"] = emb
    queries = torch.from_numpy(np.stack([emb[7], emb[3]]))
    scores, rows = exact_top_k([EmbeddingFile(tmp_path / "e.h5", 50, 4, "image", {}, None)], queries.numpy(), 5,
                               block_rows=4)
    want = np.argsort(-(emb @ queries.numpy().T).T, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(rows, want)
    assert list(rows[0][:2]) == [7, 30]
    np.testing.assert_allclose(scores, np.take_along_axis(queries.numpy() @ emb.T, want, 1), rtol=1e-6)


# --------------------------------------------------------------------------- patch features
def test_patch_features_of_a_vision_block(folders, tmp_path, color_clip, capsys):
    from PIL import Image

    from core.registry import get_registry
    from core.runtime.checkpoint import model_checkpoint, save_atomic
    from core.runtime.transforms import eval_transform

    torch.manual_seed(0)
    model = get_registry().backbone_for("example-tiny").tiny("example-tiny").eval()
    checkpoint = save_atomic(model_checkpoint(model), tmp_path / "tiny.pth")
    body = (f'\n[[inference.datasets]]\nimage_dir = "{folders["b"]}"\n')
    spec = color_clip.write_spec(tmp_path / "spec.toml", tmp_path / "results", body, model="example-tiny")
    common = ["-c", str(spec), f"inference.checkpoint={checkpoint}", "model.image_size=32"]
    assert main(["inference", *common, "inference.features=patch", "inference.patch_block=-2"]) == 0
    with h5py.File(tmp_path / "results" / "inference" / "image_embeddings.h5", "r") as f:
        patches, embeddings = f["patch_features"], f["embeddings"][:]
        # example-tiny's blocks halve the grid: block 1 of 3 on 32x32 images is 8x8 x 32 channels
        assert patches.shape == (2, 8, 8, 32) and patches.compression == "gzip" and patches.chunks[0] >= 1
        assert (f.attrs["patch_block"], list(f.attrs["patch_grid"]), f.attrs["patch_layout"]) == (1, [8, 8], "NHWC")
        names = list(f["image_paths"].asstr()[:])
        have = patches[:]
    transform = eval_transform(model.preprocess)
    images = torch.stack([transform(Image.open(n).convert("RGB")) for n in names])
    with torch.no_grad():
        want = model.forward_intermediates(images, image_indices=[1])
    np.testing.assert_allclose(have, want["image_intermediates"][0].permute(0, 2, 3, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(embeddings, want["image_features"].numpy(), atol=1e-5)

    assert main(["inference", *common, "results_dir=" + str(tmp_path / "nlc"), "inference.features=patch",
                 "inference.patch_layout=NLC"]) == 0
    with h5py.File(tmp_path / "nlc" / "inference" / "image_embeddings.h5", "r") as f:
        assert f["patch_features"].shape == (2, 16, 32) and list(f.attrs["patch_grid"]) == [4, 4]

    capsys.readouterr()
    assert main(["inference", *common, "inference.features=patch", "inference.patch_block=3"]) == 2
    assert "inference.patch_block: block 3 of a vision tower with 3 blocks" in capsys.readouterr().err
    assert main(["inference", "-c", str(spec), "inference.features=patch", f"inference.onnx_file={checkpoint}"]) == 2
    assert "inference.features: patch features come from the PyTorch model's vision blocks" in capsys.readouterr().err
