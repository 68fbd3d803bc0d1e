"""`core demo-data`: deterministic shape scenes whose captions describe every shape, written in
both formats and read back through them."""

import json
import tomllib

import numpy as np
import pytest
from PIL import Image

from core import spec
from core.cli import demo_data
from core.errors import ClipcoreError
from core.registry import get_registry
from plugins import custom, wds


@pytest.fixture
def formats_only(monkeypatch):
    monkeypatch.setenv("CLIPCORE_PLUGINS", "custom,wds")  # importing every backbone is slow
    get_registry.cache_clear()
    yield
    get_registry.cache_clear()


def run(out, fmt="custom", n=24, val=8, class_images=0, detection_frames=0, **options):
    demo_data.generate(out, fmt=fmt, n=n, val=val, class_images=class_images, detection_frames=detection_frames,
                       **options)


def test_class_folders_hold_one_shape_kind_each(tmp_path, formats_only):
    run(tmp_path / "demo", class_images=4)
    for split, count in (("train", 4), ("test", 2)):
        folders = sorted((tmp_path / "demo" / "classes" / split).iterdir())
        assert [f.name for f in folders] == sorted(demo_data.SHAPES)
        assert all(len(list(f.glob("*.png"))) == count for f in folders)
    assert demo_data.class_image(0, "train", 7) == demo_data.class_image(0, "train", 7)
    assert demo_data.class_image(0, "train", 7)[0] == demo_data.SHAPES[7 % 6]
    assert demo_data.class_image(0, "train", 7) != demo_data.class_image(0, "test", 7)


def test_detection_frames_are_coco_with_instances_and_cameras(tmp_path, formats_only):
    from core.eval.detections import read_detections

    run(tmp_path / "demo", detection_frames=6)
    root = tmp_path / "demo" / "detections"
    coco = json.loads((root / "detections.json").read_text())
    assert len(coco["images"]) == 6 and len(list((root / "frames").glob("*.png"))) == 6
    assert {c["name"] for c in coco["categories"]} == set(demo_data.SHAPES)
    boxes = coco["annotations"]
    assert all(3 <= sum(b["image_id"] == i for b in boxes) <= 5 for i in range(6))
    assert {b["instance_id"] for b in boxes} <= set(range(demo_data.INSTANCES))
    for box in boxes:  # each box lies in its frame and holds the shape's colour, not just background
        x, y, w, h = box["bbox"]
        assert 0 <= x and 0 <= y and x + w <= demo_data.FRAME_SIZE and y + h <= demo_data.FRAME_SIZE
    frame = np.asarray(Image.open(root / coco["images"][0]["file_name"]).convert("RGB"), dtype=float)
    x, y, w, h = (round(v) for v in boxes[0]["bbox"])
    assert frame[y:y + h, x:x + w].std() > frame[:4, :4].std()
    read = read_detections(str(root / "detections.json"), str(root))  # the inference reader takes it whole
    assert len(read.boxes) == len(boxes) and not read.skipped
    assert demo_data.detection_frame(0, 2) == demo_data.detection_frame(0, 2)


def test_samples_are_a_function_of_the_seed():
    assert demo_data.sample(3, "train", 7) == demo_data.sample(3, "train", 7)
    assert demo_data.sample(3, "train", 7) != demo_data.sample(4, "train", 7)
    assert demo_data.sample(3, "train", 7) != demo_data.sample(3, "val", 7)


def test_every_caption_names_every_shape():
    for index in range(30):
        rng = np.random.default_rng([5, 0, index])
        shapes = demo_data.scene(rng)
        texts = demo_data.captions(shapes, rng)
        assert len(texts) == demo_data.CAPTIONS_PER_IMAGE and len(set(texts)) > 1
        for text in texts:
            for shape in shapes:
                phrases, short = demo_data.POSITIONS[shape.cell]
                assert shape.kind in text and shape.colour in text
                assert any(word in text for word in demo_data.SIZE_WORDS[shape.size])
                assert any(p in text.lower() for p in (*phrases, short))


def test_scenes_are_varied():
    scenes = [demo_data.scene(np.random.default_rng([0, 0, i])) for i in range(300)]
    assert {len(s) for s in scenes} == {1, 2}
    assert {s.kind for sc in scenes for s in sc} == set(demo_data.SHAPES)
    assert {s.colour for sc in scenes for s in sc} == set(demo_data.DOMAINS["all"])
    assert len({s.cell for sc in scenes for s in sc}) == 9


def _from_toml(path):
    assert tomllib.loads(path.read_text())["dataset"]["augmentation"] == {"scale": [1.0, 1.0], "color_jitter": [],
                                                                         "grayscale": 0.0}
    return spec.load_config(path)


@pytest.mark.parametrize("fmt", ["custom", "wds"])
def test_demo_data_reads_back_through_its_format(tmp_path, formats_only, fmt, data_kit):
    run(tmp_path / "demo", fmt)
    cfg = _from_toml(tmp_path / "demo" / "dataset.toml")
    val = custom.retrieval(data_kit.request(cfg))
    assert len(val.image_paths) == 8 and len(val.captions) == 8 * demo_data.CAPTIONS_PER_IMAGE
    assert val.load_image(0).shape == (3, 16, 16)
    loader = (wds if fmt == "wds" else custom).build(data_kit.request(cfg, batch_size=4))
    assert len(data_kit.epoch_keys(loader)) == 24


def test_demo_data_refuses_to_overwrite_without_force(tmp_path, formats_only):
    run(tmp_path, n=4, val=2)
    with pytest.raises(ClipcoreError) as err:
        run(tmp_path, n=4, val=2)
    assert "already exists" in str(err.value) and "--force" in str(err.value)
    run(tmp_path, n=4, val=2, force=True)


def test_the_shifted_domain_shows_colours_the_general_one_never_does(tmp_path, formats_only, data_kit):
    general, shifted = (set(demo_data.DOMAINS[d]) for d in ("general", "shifted"))
    assert not general & shifted and {"pink", "brown"} <= shifted and general | shifted <= set(demo_data.COLOURS)
    for domain, colours in (("general", general), ("shifted", shifted)):
        run(tmp_path / domain, n=40, val=8, domain=domain)
        cfg = _from_toml(tmp_path / domain / "dataset.toml")
        texts = " ".join(custom.retrieval(data_kit.request(cfg)).captions)
        words = {c for c in demo_data.COLOURS if c in texts.split()}
        assert words and words <= colours
    assert demo_data.sample(0, "train", 3, "general") != demo_data.sample(0, "train", 3, "all")
    assert demo_data.sample(0, "train", 3) == demo_data.sample(0, "train", 3, "all")
