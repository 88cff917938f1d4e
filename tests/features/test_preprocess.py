"""EvalPreprocess: the backbone's eval transform, bit for bit; JPEG draft as an opt-in."""

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from transferkit.backbones import create_backbone
from transferkit.features.preprocess import EvalPreprocess

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noise_image(width, height, mode="RGB", seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


@pytest.fixture(scope="module")
def lite0_transform():
    return create_backbone("efficientnet_lite0").eval_transform()


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (333, 333), (97, 180), (1024, 260)])
def test_same_values_as_the_timm_transform(lite0_transform, tmp_path, size):
    path = tmp_path / "image.png"
    noise_image(*size, seed=size[0]).save(path)
    expected = lite0_transform(Image.open(path).convert("RGB")).numpy()
    got = EvalPreprocess(lite0_transform)(path)
    assert got.dtype == np.float32 and got.shape == expected.shape == (3, 224, 224)
    np.testing.assert_array_equal(got, expected)


def test_imagenet_normalisation_is_also_exact(tmp_path):
    # Lite0 normalises with 0.5/0.5; most timm networks use ImageNet's mean and std.
    transform = transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32),
                                    transforms.ToTensor(),
                                    transforms.Normalize((0.485, 0.456, 0.406),
                                                         (0.229, 0.224, 0.225))])
    noise_image(64, 48).save(tmp_path / "a.png")
    np.testing.assert_array_equal(EvalPreprocess(transform)(tmp_path / "a.png"),
                                  transform(Image.open(tmp_path / "a.png").convert("RGB")).numpy())


def test_other_transforms_are_applied_as_they_are(tmp_path):
    transform = transforms.Compose([transforms.Resize((20, 30)), transforms.ToTensor()])
    noise_image(64, 48).save(tmp_path / "a.png")
    np.testing.assert_array_equal(EvalPreprocess(transform)(tmp_path / "a.png"),
                                  transform(Image.open(tmp_path / "a.png").convert("RGB")).numpy())


def test_jpeg_draft_decodes_large_jpegs_smaller_and_leaves_the_rest(lite0_transform, tmp_path):
    noise_image(1200, 900).save(tmp_path / "large.jpg", quality=90)
    noise_image(1200, 900).save(tmp_path / "large.png")
    exact, draft = EvalPreprocess(lite0_transform), EvalPreprocess(lite0_transform, jpeg_draft=True)
    assert draft.draft_size == (256, 256) and exact.draft_size is None
    large_exact, large_draft = exact(tmp_path / "large.jpg"), draft(tmp_path / "large.jpg")
    assert large_draft.shape == large_exact.shape == (3, 224, 224)
    assert np.abs(large_draft - large_exact).max() > 0  # other pixels: an opt-in
    np.testing.assert_array_equal(draft(tmp_path / "large.png"), exact(tmp_path / "large.png"))
