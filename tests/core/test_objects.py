"""Object-level use: the crop rule, object embeddings from COCO detections (`core inference`),
search over objects, and re-identification metrics against a brute-force reference."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.cli.main import main
from core.eval.detections import crop_box
from core.eval.reid import reid_metrics


# --------------------------------------------------------------------------- the crop rule
def test_crop_rule():
    assert crop_box((10, 20, 30, 10), 100, 100, 0.0, "box") == (10, 20, 40, 30)
    assert crop_box((10, 20, 30, 10), 100, 100, 0.1, "box") == (7, 19, 43, 31)      # 3 px and 1 px of context
    assert crop_box((10, 20, 30, 10), 100, 100, 0.0, "square") == (10, 10, 40, 40)  # the height grows to 30
    assert crop_box((90, 90, 20, 20), 100, 100, 0.0, "box") == (90, 90, 100, 100)   # clipped to the image
    assert crop_box((120, 10, 5, 5), 100, 100, 0.0, "box") is None                  # wholly outside
    assert crop_box((-10, -10, 5, 5), 100, 100, 0.5, "box") is None                 # only its margin is inside


# --------------------------------------------------------------------------- re-id metrics
def brute_force_reid(scores, q_ids, g_ids, q_cams, g_cams, q_frames, g_frames, same_set, ks=(1, 5, 10)):
    """Per query: walk the gallery best first, skipping junk, exactly as the definitions read."""
    firsts, aps = [], []
    for q in range(len(q_ids)):
        if q_ids[q] == -1:
            continue
        ranked = sorted(range(len(g_ids)), key=lambda g: (-scores[q][g], g))
        rank, hits, precisions = 0, 0, []
        first = None
        for g in ranked:
            same = g_ids[g] == q_ids[q]
            if (same_set and g == q) or (same and q_cams[q] != -1 and g_cams[g] == q_cams[q]) \
                    or (same and q_frames[q] != -1 and g_frames[g] == q_frames[q]):
                continue
            rank += 1
            if same:
                hits += 1
                precisions.append(hits / rank)
                first = first or rank
        if first is not None:
            firsts.append(first)
            aps.append(sum(precisions) / len(precisions))
    return {**{f"rank-{k}": sum(f <= k for f in firsts) / len(firsts) for k in ks}, "mAP": sum(aps) / len(aps),
            "queries": len(firsts)}


@pytest.mark.parametrize("same_set", [True, False])
@pytest.mark.parametrize("with_cameras", [True, False])
def test_reid_metrics_against_brute_force(same_set, with_cameras):
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    n_q, n_g = 30, 50
    q = F.normalize(torch.randn(n_q, 6, generator=g), dim=-1)
    gallery = q if same_set else F.normalize(torch.randn(n_g, 6, generator=g), dim=-1)
    n_g = len(gallery)
    q_ids, g_ids = rng.integers(-1, 6, n_q), (rng.integers(-1, 6, n_g) if not same_set else None)
    cams = lambda n: rng.integers(0, 2, n) if with_cameras else np.full(n, -1)  # noqa: E731
    q_cams, q_frames = cams(n_q), rng.integers(0, 8, n_q)
    g_cams, g_frames = (cams(n_g), rng.integers(0, 8, n_g)) if not same_set else (q_cams, q_frames)
    found = reid_metrics(q, q_ids, None if same_set else gallery, g_ids, query_cameras=q_cams,
                         gallery_cameras=None if same_set else g_cams, query_frames=q_frames,
                         gallery_frames=None if same_set else g_frames, chunk_bytes=8 * n_g * 7)  # several chunks
    want = brute_force_reid((q @ gallery.T).numpy(), q_ids, q_ids if same_set else g_ids, q_cams, g_cams,
                            q_frames, g_frames, same_set)
    for key, value in want.items():
        assert found[key] == pytest.approx(value), key
    assert found["queries"] + found["queries_without_match"] == n_q


# --------------------------------------------------------------------------- inference from detections
@pytest.fixture(scope="module")
def frames(tmp_path_factory, color_clip) -> Path:
    """Two 60×40 frames, each with coloured patches on black, and detections naming them."""
    root = tmp_path_factory.mktemp("detections")
    (root / "img").mkdir()
    patches = {"f0.png": [("red", (0, 0, 20, 20)), ("blue", (30, 10, 20, 20))],
               "f1.png": [("blue", (5, 15, 20, 20)), ("green", (40, 0, 20, 20))]}
    coco = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "patch"}]}
    for image_id, (name, items) in enumerate(patches.items()):
        image = Image.new("RGB", (60, 40), (0, 0, 0))
        for colour, (x, y, w, h) in items:
            image.paste(color_clip.colors[colour], (x, y, x + w, y + h))
            coco["annotations"].append({"id": 100 + len(coco["annotations"]), "image_id": image_id,
                                        "bbox": [x, y, w, h], "category_id": 7, "score": 0.9,
                                        "track_id": ["red", "blue", "green"].index(colour)})
        image.save(root / "img" / name)
        coco["images"].append({"id": image_id, "file_name": name, "width": 60, "height": 40})
    (root / "detections.json").write_text(json.dumps(coco))
    return root


def object_spec(tmp_path: Path, color_clip, detections: Path, image_dir: Path, **extra) -> Path:
    spec = color_clip.write_spec(tmp_path / "spec.toml", tmp_path / "results")
    fields = {"detections": str(detections), "detections_image_dir": str(image_dir), "crop_margin": 0.0,
              "crop_shape": "box", **extra}
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    spec.write_text(spec.read_text().replace("[inference]\n", "[inference]\n" + text))
    return spec


def unit(color_clip, colour: str) -> np.ndarray:
    v = np.array(color_clip.colors[colour], np.float32) / 127.5 - 1
    return v / np.linalg.norm(v)


def test_object_embeddings_from_detections(frames, tmp_path, color_clip):
    spec = object_spec(tmp_path, color_clip, frames / "detections.json", frames / "img")
    assert main(["inference", "-c", str(spec)]) == 0
    with h5py.File(tmp_path / "results" / "inference" / "object_embeddings.h5", "r") as f:
        assert f.attrs["embedding_type"] == "object" and f.attrs["num_objects"] == 4
        assert json.loads(f.attrs["categories"]) == {"7": "patch"} and f.attrs["crop_shape"] == "box"
        # each crop is exactly its patch, so its embedding is the patch's colour
        np.testing.assert_allclose(f["embeddings"][:], np.stack([unit(color_clip, c)
                                   for c in ("red", "blue", "blue", "green")]), atol=1e-5)
        assert [Path(p).name for p in f["image_paths"].asstr()[:]] == ["f0.png", "f0.png", "f1.png", "f1.png"]
        assert f["boxes"][1].tolist() == [30, 10, 20, 20]
        assert f["instance_ids"][:].tolist() == [0, 1, 1, 2]           # from track_id
        assert f["annotation_ids"][:].tolist() == [100, 101, 102, 103]
        assert f["frame_ids"][:].tolist() == [0, 0, 1, 1]              # the image id when no frame_id is given
        assert f["camera_ids"][:].tolist() == [-1] * 4
        np.testing.assert_allclose(f["scores"][:], 0.9)
    # a wide margin takes in the black around a patch: its colour stays, its embedding barely moves
    spec = object_spec(tmp_path, color_clip, frames / "detections.json", frames / "img", crop_margin=0.25,
                       crop_shape="square")
    assert main(["inference", "-c", str(spec)]) == 0


def test_bad_boxes_are_reported_and_bad_files_are_one_message(frames, tmp_path, color_clip, capsys):
    coco = json.loads((frames / "detections.json").read_text())
    coco["annotations"] += [{"id": 200, "image_id": 0, "bbox": [5, 5, 0, 10]},        # no area
                            {"id": 201, "image_id": 1, "bbox": [500, 5, 10, 10]}]     # outside the 60×40 image
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(coco))
    assert main(["inference", "-c", str(object_spec(tmp_path, color_clip, bad, frames / "img"))]) == 0
    out = tmp_path / "results" / "inference"
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(s["path"]).name, s["reason"]) for s in skipped] == [("f0.png#200", "bad-box"), ("f1.png#201", "bad-box")]
    assert "has no area" in skipped[0]["detail"] and "lies outside the 60x40 image" in skipped[1]["detail"]
    with h5py.File(out / "object_embeddings.h5", "r") as f:
        assert f.attrs["num_objects"] == 4

    cases = {
        "missing image": (dict(coco, images=coco["images"] + [{"id": 9, "file_name": "gone.png"}],
                               annotations=[{"image_id": 9, "bbox": [0, 0, 4, 4]}]),
                          "the detections name 1 image(s) that do not exist"),
        "not coco": ({"pictures": []}, "is not COCO detections"),
        "bad bbox": (dict(coco, annotations=[{"image_id": 0, "bbox": "wide"}]), "annotation 0 of"),
        "no usable box": (dict(coco, annotations=[{"image_id": 0, "bbox": [1, 1, 0, 0]}]), "has no usable boxes"),
    }
    for name, (data, message) in cases.items():
        bad.write_text(json.dumps(data))
        code = main(["inference", "-c", str(object_spec(tmp_path, color_clip, bad, frames / "img"))])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2 and message in err and "Traceback" not in err, name
    bad.write_text("{not json")
    assert main(["inference", "-c", str(object_spec(tmp_path, color_clip, bad, frames / "img"))]) == 2
    assert "cannot read detections" in capsys.readouterr().err


def test_reid_evaluation_and_object_search(frames, tmp_path, color_clip, capsys, monkeypatch):
    spec = object_spec(tmp_path, color_clip, frames / "detections.json", frames / "img")
    assert main(["inference", "-c", str(spec)]) == 0
    objects = tmp_path / "results" / "inference" / "object_embeddings.h5"
    assert main(["evaluate", "-c", str(spec), f"evaluate.reid_query={objects}"]) == 0
    reid = json.loads((tmp_path / "results" / "evaluate" / "results.json").read_text())["reid"]
    # only instance 1 (blue) appears twice: one query per blue box, each finding the other first
    assert (reid["queries"], reid["queries_without_match"], reid["rank-1"], reid["mAP"]) == (2, 2, 1.0, 1.0)

    monkeypatch.setenv("COLUMNS", "400")
    assert main(["search", "--images", str(objects), "--object", "1", "-k", "2"]) == 0
    out = capsys.readouterr().out
    hits = [line for line in out.splitlines() if "f1.png" in line or "f0.png" in line][1:]  # after the title
    assert "[5, 15, 20, 20]" in hits[0] and "patch" in hits[0] and "│ 1 " in hits[0]  # the other blue box first
    assert all("[30, 10, 20, 20]" not in h for h in hits)                               # never the query itself
    assert main(["search", "--images", str(objects), "green", "-k", "1"]) == 0
    assert "[40, 0, 20, 20]" in capsys.readouterr().out

    text = tmp_path / "results" / "inference" / "text_embeddings.h5"
    with h5py.File(text, "w") as f:
        f.attrs["embedding_type"] = "text"
    code = main(["evaluate", "-c", str(spec), f"evaluate.reid_query={text}"])
    assert code == 2 and "is not an object embedding file" in capsys.readouterr().err
    code = main(["search", "--images", str(objects), "--object", "9"])
    assert code == 2 and "row 9 is not in" in capsys.readouterr().err
