"""Transforms follow the preprocessing spec exactly, augment for every family, decode fast and
convert every image mode correctly."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from core.backbone import PreprocessSpec
from core.bad_samples import BadSample
from core.spec.config import AugmentationConfig
from core.images import open_image, to_rgb
from core.runtime.transforms import eval_transform, resized_crop, train_transform

torch.set_num_threads(1)
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def spec(mode="shortest", h=32, w=32, interpolation="bicubic"):
    return PreprocessSpec(height=h, width=w, mean=MEAN, std=STD, resize_mode=mode, interpolation=interpolation)


def photo_jpeg(size=(512, 384), quality=92) -> bytes:
    """A smooth photo-like JPEG (gradients, shapes, mild noise)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(1)
    rgb = np.stack([x / w * 220, y / h * 200, (x + y) / (w + h) * 180], -1) + rng.normal(0, 3, (h, w, 3))
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_shortest_matches_torchvision_resize_and_center_crop(interpolation, data_kit):
    data = data_kit.image_bytes(size=(157, 100), seed=3)
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    reference = T.Compose([T.Resize(32, interpolation=mode), T.CenterCrop(32), T.ToTensor(), T.Normalize(MEAN, STD)])
    ours = eval_transform(spec(interpolation=interpolation))(open_image(data, 10**8))
    theirs = reference(Image.open(io.BytesIO(data)))
    pixel_error = ((ours - theirs) * torch.tensor(STD).view(3, 1, 1)).abs()
    assert ours.shape == (3, 32, 32)
    assert pixel_error.max() <= 1 / 255 + 1e-6 and pixel_error.mean() < 0.01 / 255  # float rounding only


def test_eval_squash_matches_torchvision_resize(data_kit):
    data = data_kit.image_bytes(size=(90, 41), seed=4)
    reference = T.Compose([T.Resize((24, 40), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize(MEAN, STD)])
    ours = eval_transform(spec("squash", 24, 40))(open_image(data, 10**8))
    assert torch.allclose(ours, reference(Image.open(io.BytesIO(data))), atol=1e-5)


def test_eval_shortest_non_square_covers_then_crops(data_kit):
    out = eval_transform(spec("shortest", 24, 40))(open_image(data_kit.image_bytes(size=(50, 50)), 10**8))
    assert out.shape == (3, 24, 40)


def test_eval_transform_describes_itself_from_the_spec_alone():
    described = eval_transform(spec()).describe()
    assert described["resize_mode"] == "shortest" and described["height"] == 32 and described["mean"] == list(MEAN)
    assert any("centre-crop" in step for step in described["steps"])
    assert eval_transform(spec()).describe() == described


def test_train_transform_augments_and_keeps_the_spec_geometry(data_kit):
    aug = AugmentationConfig(scale=[0.3, 0.6], color_jitter=[1.0, 0.4, 0.4, 0.4, 0.1], grayscale=0.0)
    transform = train_transform(spec("squash", 24, 24), aug)
    image = data_kit.image_bytes(size=(64, 48), seed=5)
    torch.manual_seed(0)
    outputs = [transform(open_image(image, 10**8)) for _ in range(4)]
    assert all(o.shape == (3, 24, 24) for o in outputs)
    assert not torch.allclose(outputs[0], outputs[1])  # random crop and jitter


def test_legacy_four_element_color_jitter_means_probability_point_eight():
    transform = train_transform(spec(), AugmentationConfig(color_jitter=[0.4, 0.4, 0.4, 0.1]))
    assert transform.jitter_prob == 0.8 and transform.jitter is not None
    assert train_transform(spec(), AugmentationConfig(color_jitter=[])).jitter is None


def test_grayscale_probability_one_gives_equal_channels(data_kit):
    aug = AugmentationConfig(scale=[1.0, 1.0], color_jitter=[], grayscale=1.0)
    out = train_transform(spec("squash", 16, 16), aug)(open_image(data_kit.image_bytes(), 10**8))
    pixels = out * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)


def test_scale_one_one_disables_the_random_crop(data_kit):
    aug = AugmentationConfig(scale=[1.0, 1.0], color_jitter=[], grayscale=0.0)
    data = data_kit.image_bytes(size=(70, 40), seed=6)
    train = train_transform(spec(), aug)(open_image(data, 10**8))
    assert torch.equal(train, eval_transform(spec())(open_image(data, 10**8)))


def test_draft_decoding_matches_full_decoding_on_the_same_box():
    data = photo_jpeg()
    box = (40.0, 30.0, 440.0, 350.0)  # 400x320 -> 64x64: decoded at 1/4 scale
    full = Image.open(io.BytesIO(data)).convert("RGB").crop((40, 30, 440, 350)).resize((64, 64), Image.BICUBIC)
    lazy = open_image(data, 10**8)
    fast = resized_crop(lazy, box, (64, 64), Image.BICUBIC, reduce=True)
    assert lazy.size == (128, 96)  # the decoder really ran at reduced scale
    error = np.abs(np.asarray(fast, dtype=np.float32) - np.asarray(full, dtype=np.float32)).mean()
    assert error < 1.0  # under one 8-bit level on average


def test_draft_is_not_used_when_the_crop_is_near_the_output_size():
    lazy = open_image(photo_jpeg(), 10**8)
    resized_crop(lazy, (0.0, 0.0, 100.0, 100.0), (64, 64), Image.BICUBIC, reduce=True)
    assert lazy.size == (512, 384)


# ------------------------------------------------------------------ image modes
def _decode(data: bytes) -> np.ndarray:
    image = open_image(data, 10**8)
    image.load()
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    return np.asarray(rgb)


def test_cmyk_jpeg_converts_to_rgb():
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    pixel = _decode(buffer.getvalue())[4, 4]
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_palette_png_with_transparency_composites_over_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] + [10, 200, 10] * 255)
    image.putpixel((1, 1), 1)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    pixels = _decode(buffer.getvalue())
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[1, 1]) == (10, 200, 10)


def test_rgba_png_composites_over_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 255, 0))
    image.putpixel((2, 2), (200, 0, 0, 255))
    image.putpixel((3, 3), (0, 0, 0, 128))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    pixels = _decode(buffer.getvalue())
    assert tuple(pixels[0, 0]) == (255, 255, 255) and tuple(pixels[2, 2]) == (200, 0, 0)
    assert 120 <= pixels[3, 3][0] <= 135  # half-transparent black over white


def test_sixteen_bit_grayscale_png_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100], [65535, 32896]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, "PNG")
    pixels = _decode(buffer.getvalue())
    assert pixels[0, 0, 0] == 0 and pixels[0, 1, 0] == 100 and pixels[1, 0, 0] == 255 and pixels[1, 1, 0] == 128
    assert (pixels[..., 0] == pixels[..., 2]).all()


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_grayscale_and_bilevel_images_convert(mode, data_kit):
    data = data_kit.image_bytes(mode=mode)
    assert _decode(data).shape == (16, 24, 3)


def test_images_over_the_pixel_limit_are_refused(data_kit):
    with pytest.raises(BadSample) as err:
        open_image(data_kit.image_bytes(size=(100, 100)), max_pixels=9999)
    assert err.value.reason == "pixel-limit" and "10000 pixels" in err.value.detail


def test_zero_byte_and_garbage_images_are_bad_samples():
    with pytest.raises(BadSample) as err:
        open_image(b"", 10**8)
    assert err.value.reason == "empty-file"
    with pytest.raises(BadSample) as err:
        open_image(b"definitely not an image", 10**8)
    assert err.value.reason == "corrupt-image"
