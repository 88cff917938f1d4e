"""``transferkit segment``: learning a bright disc beats the trivial masks, masks of the
input sizes, Dice/IoU by hand, strategies, the bundle round trip, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.bundle import load_bundle, save_bundle
from transferkit.cli import main
from transferkit.errors import BundleError, DataError
from transferkit.evaluate.segmentation import dice_iou, mean_dice_iou
from transferkit.jobs import segment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDTH, HEIGHT = 72, 56  # not square: masks must come back at each image's own size


def disc_pair(seed: int):
    """Noise with a bright disc of random place and radius; the mask is the disc."""
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 130, (HEIGHT, WIDTH, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx = rng.integers(16, HEIGHT - 16), rng.integers(16, WIDTH - 16)
    radius = rng.integers(7, 15)
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    image[disc] = np.clip(np.array([210, 170, 60]) + rng.integers(-25, 26, (disc.sum(), 3)), 0, 255)
    return image, disc


def write_pairs(root, n: int, offset: int = 0):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for i in range(n):
        image, disc = disc_pair(offset + i)
        Image.fromarray(image).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / "masks" / f"p{i:02d}.png")
    return root / "images", root / "masks"


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    root = tmp_path_factory.mktemp("discs")
    return write_pairs(root / "train", 24), write_pairs(root / "test", 10, offset=1000)


def options(tiny_checkpoint, **extra):
    path, arch = tiny_checkpoint
    settings = dict(weights=str(path), arch=arch, image_size=64, epochs=8, lr=1e-2,
                    batch_size=8, strategy="full", device="cpu")
    settings.update(extra)
    return settings


@pytest.fixture(scope="module")
def fitted(tiny_checkpoint, discs, tmp_path_factory):
    """One `segment fit` of the tiny network on 24 discs (5 held out)."""
    (images, masks), _ = discs
    out = tmp_path_factory.mktemp("model") / "model"
    threads = torch.get_num_threads()  # module fixtures run before one_torch_thread
    torch.set_num_threads(1)
    try:
        summary = segment.fit(images, masks, out=out, **options(tiny_checkpoint))
    finally:
        torch.set_num_threads(threads)
    return out, summary


def test_fit_beats_the_trivial_masks_on_new_images(fitted, discs):
    out, summary = fitted
    _, (images, masks) = discs
    truths = [np.asarray(Image.open(p)) > 0 for p in sorted(masks.glob("*.png"))]
    all_foreground = mean_dice_iou(truths, [np.ones_like(t) for t in truths])[0]
    all_background = mean_dice_iou(truths, [np.zeros_like(t) for t in truths])[0]
    assert all_background == 0.0 and all_foreground < 0.2
    scored = segment.evaluate(out, images, masks)
    print("held-out Dice", summary["dice"], "new images Dice", scored["dice"], scored["iou"])
    assert scored["n_images"] == 10
    assert scored["dice"] >= 0.7 and scored["dice"] > all_foreground + 0.5
    assert 0 < scored["iou"] < scored["dice"]  # IoU = D / (2 - D) < D for 0 < D < 1
    assert summary["n_train"] == 19 and summary["n_val"] == 5 and summary["dice"] > 0.5
    for name in ("config.json", "segmenter.safetensors", "metrics.json", "report.html",
                 "learning_curves.png", "metrics.csv"):
        assert (out / name).is_file(), name
    report = (out / "report.html").read_text()
    assert "Worst held-out images" in report and "Per-image Dice" in report
    assert report.count("data:image/png;base64,") == 4  # best, worst, histogram, curves


def test_predict_writes_masks_of_the_input_sizes_and_evaluate_matches_them(fitted, discs, tmp_path):
    out, _ = fitted
    _, (images, masks) = discs
    written = segment.predict(out, [images], out=tmp_path / "predicted")
    assert len(written["masks"]) == 10 and written["n_skipped"] == 0
    dices, ious = [], []
    for item in written["masks"]:
        predicted = np.asarray(Image.open(item["mask"]))
        assert predicted.shape == (HEIGHT, WIDTH) and set(np.unique(predicted)) <= {0, 255}
        truth = np.asarray(Image.open(masks / Path(item["mask"]).name)) > 0
        p = predicted > 0
        # Dice and IoU by hand, not through transferkit.evaluate
        dices.append(2 * (p & truth).sum() / (p.sum() + truth.sum()))
        ious.append((p & truth).sum() / (p | truth).sum())
    scored = segment.evaluate(out, images, masks)
    assert scored["dice"] == pytest.approx(np.mean(dices), abs=1e-9)
    assert scored["iou"] == pytest.approx(np.mean(ious), abs=1e-9)
    # A new folder only: the masks just written are never overwritten.
    with pytest.raises(Exception, match="not an empty folder"):
        segment.predict(out, [images], out=tmp_path / "predicted")


def test_dice_and_iou_of_a_hand_made_pair():
    truth = np.array([[0, 1, 1], [0, 1, 0]])
    predicted = np.array([[1, 1, 0], [0, 1, 0]])
    # overlap 2 pixels, 3 true, 3 predicted, union 4
    assert dice_iou(truth, predicted) == pytest.approx((4 / 6, 2 / 4))
    assert dice_iou(np.zeros((2, 2)), np.zeros((2, 2))) == (1.0, 1.0)  # nothing to find
    assert dice_iou(np.zeros((2, 2)), np.ones((2, 2))) == (0.0, 0.0)
    # Three classes: the mean over the foreground classes present (class 2 absent from both).
    three = np.array([[0, 1], [1, 1]])
    assert dice_iou(three, np.array([[1, 1], [1, 0]]), n_classes=3) == pytest.approx((2 / 3, 1 / 2))


def test_bundle_round_trip_predicts_the_same(tiny_checkpoint, discs, tmp_path):
    from transferkit.methods.segmentation import SegmentationTransfer

    (images, masks), (test_images, _) = discs
    settings = options(tiny_checkpoint, epochs=2, progress=False)
    estimator = SegmentationTransfer(**settings).fit(sorted(images.glob("*.png")),
                                                     sorted(masks.glob("*.png")))
    paths = sorted(test_images.glob("*.png"))[:3]
    before, _, _ = estimator.predict_proba_paths(paths)
    save_bundle(estimator, tmp_path / "model")
    loaded = load_bundle(tmp_path / "model")
    after, _, _ = loaded.predict_proba_paths(paths)
    for a, b in zip(before, after):
        assert a.shape == (2, HEIGHT, WIDTH) and np.array_equal(a, b)


def test_head_strategy_leaves_the_encoder_bitwise_unchanged(tiny_checkpoint, discs):
    from safetensors.torch import load_file

    from transferkit.methods.segmentation import SegmentationTransfer

    (images, masks), _ = discs
    estimator = SegmentationTransfer(**options(tiny_checkpoint, epochs=1, strategy="head",
                                               progress=False))
    estimator.fit(sorted(images.glob("*.png")), sorted(masks.glob("*.png")))
    pretrained = load_file(str(tiny_checkpoint[0]))
    encoder = {k[len("encoder."):]: v for k, v in estimator.model_.state_dict().items()
               if k.startswith("encoder.")}
    assert any(k.endswith("running_mean") for k in encoder)
    for key, value in encoder.items():
        assert torch.equal(value, pretrained[key]), key
    assert [g["trainable"] for g in estimator.groups_][-1] is True
    assert not any(g["trainable"] for g in estimator.groups_[:-1])


def test_random_init_is_the_same_network_with_other_seeded_weights(tiny_checkpoint):
    from transferkit.methods.segmentation import SegmentationTransfer

    def encoder(**kw):
        net = SegmentationTransfer(**options(tiny_checkpoint, **kw))._build()[0]
        return {k: v for k, v in net.state_dict().items() if k.startswith("encoder.")}

    pretrained, random_a = encoder(), encoder(pretrained=False)
    random_b = encoder(pretrained=False)
    assert list(pretrained) == list(random_a)
    weights = [k for k in pretrained if k.endswith("conv_stem.weight")]
    assert not torch.equal(pretrained[weights[0]], random_a[weights[0]])
    assert all(torch.equal(random_a[k], random_b[k]) for k in random_a)  # seeded


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_masks_stop_fit_with_one_line(tiny_checkpoint, tmp_path, capsys):
    images, masks = write_pairs(tmp_path / "data", 4)
    Image.fromarray(np.full((HEIGHT, WIDTH), 128, np.uint8)).save(masks / "p01.png")
    path, arch = tiny_checkpoint
    argv = ["segment", "fit", str(images), str(masks), "--out", str(tmp_path / "m"),
            "--weights", str(path), "--arch", arch, "--image-size", "64", "--epochs", "1"]
    assert "mask values 128 are not 0 and 255" in _one_line_error(capsys, argv)
    assert not (tmp_path / "m").exists()  # a refused run leaves nothing behind
    Image.fromarray(np.zeros((HEIGHT - 1, WIDTH), np.uint8)).save(masks / "p01.png")
    assert "must have its image's size" in _one_line_error(capsys, argv)


def test_unpaired_files_are_listed_and_skipped(fitted, tmp_path, capsys):
    out, _ = fitted
    images, masks = write_pairs(tmp_path / "data", 3)
    (masks / "p02.png").rename(masks / "orphan.png")
    assert main(["segment", "evaluate", str(out), str(images), str(masks), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_images"] == 2 and set(result) >= {"dice", "iou"}
    reasons = " ".join(item["reason"] for item in result["skipped"])
    assert "p02.png: no mask" in reasons and "orphan.png: no image" in reasons


def test_tampered_config_is_one_line(fitted, tmp_path, capsys):
    import shutil

    out, _ = fitted
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = json.loads((copy / "config.json").read_text())
    config["n_classes"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="n_classes 3 disagrees"):
        load_bundle(copy)
    config["n_classes"], config["params"]["n_classes"] = 3, 3
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="classifier.weight has shape"):
        load_bundle(copy)
    config["params"]["run_dir"] = "/tmp/elsewhere"  # a config may never set where to write
    (copy / "config.json").write_text(json.dumps(config))
    err = _one_line_error(capsys, ["segment", "evaluate", str(copy), str(tmp_path), str(tmp_path)])
    assert "run_dir" in err


def test_a_segmentation_model_is_refused_by_classifier_commands(fitted, capsys):
    out, _ = fitted
    with pytest.raises(DataError):
        segment.run("evaluate", bundle=out, images=out / "missing", masks=out / "missing")
    err = _one_line_error(capsys, ["predict", str(out), str(out / "learning_curves.png")])
    assert "use `transferkit segment predict`" in err
    # `transferkit report` would replace the held-out overlays with a generic page.
    before = (out / "report.html").read_bytes()
    err = _one_line_error(capsys, ["report", str(out)])
    assert "segmentation model" in err and (out / "report.html").read_bytes() == before


def test_class_index_masks_with_declared_classes(tiny_checkpoint, tmp_path):
    images, masks = write_pairs(tmp_path / "data", 6)
    for path in masks.glob("*.png"):  # disc = 1, a band along the top = 2
        indices = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
        indices[:6] = 2
        Image.fromarray(indices).save(path)
    with pytest.raises(DataError, match="mask values 1, 2 are not 0 and 255"):
        segment.fit(images, masks, out=tmp_path / "binary", **options(tiny_checkpoint, epochs=1))
    summary = segment.fit(images, masks, out=tmp_path / "model", n_classes=3,
                          **options(tiny_checkpoint, epochs=2, image_size=32))
    assert summary["n_classes"] == 3 and summary["dice"] is not None
    written = segment.predict(tmp_path / "model", [images], out=tmp_path / "predicted")
    for item in written["masks"]:
        predicted = np.asarray(Image.open(item["mask"]))
        assert predicted.shape == (HEIGHT, WIDTH) and predicted.max() <= 2  # class indices


# -- ONNX export -----------------------------------------------------------------------

# Runs the CLI in a fresh interpreter, then reports the heavy packages it imported.
_RUN_AND_LIST = """
import json, sys
from transferkit.cli import main
code = main(sys.argv[1:])
heavy = sorted({name.split('.')[0] for name in sys.modules} & {'torch', 'timm', 'sklearn'})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.fixture(scope="module")
def exported(fitted):
    out, _ = fitted
    onnx_path = out.parent / "model.onnx"
    summary = segment_export(out, onnx_path)
    return onnx_path, summary


def segment_export(folder, path):
    from transferkit.jobs import export

    return export.run(folder, path)


def test_export_checks_and_the_file_segments_as_the_folder_without_torch(fitted, exported, discs,
                                                                         tmp_path):
    import subprocess
    import sys

    out, _ = fitted
    onnx_path, summary = exported
    assert summary["task"] == "segmentation" and summary["classes"] == [0, 1]
    assert summary["export_check"]["max_abs_difference"] <= 1e-4
    _, (images, masks) = discs
    # The file through the CLI in a fresh interpreter: masks written, no torch imported.
    result = subprocess.run([sys.executable, "-c", _RUN_AND_LIST, "segment", "predict",
                             str(onnx_path), str(images), "--out", str(tmp_path / "onnx"),
                             "--quiet"], capture_output=True, text=True)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}, result.stderr
    segment.predict(out, [images], out=tmp_path / "folder")
    names = sorted(p.name for p in (tmp_path / "folder").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "onnx").iterdir()) and len(names) == 10
    for name in names:
        from_folder = np.asarray(Image.open(tmp_path / "folder" / name))
        from_file = np.asarray(Image.open(tmp_path / "onnx" / name))
        assert from_file.shape == (HEIGHT, WIDTH)
        # Probabilities within 1e-4: a pixel may flip only where the classes tie.
        assert (from_folder == from_file).mean() >= 0.999
    by_folder = segment.evaluate(out, images, masks)
    by_file = segment.evaluate(onnx_path, images, masks)
    assert by_file["dice"] == pytest.approx(by_folder["dice"], abs=1e-3)
    assert by_file["dice"] > 0.5  # the disc, not an empty mask


def test_bilinear_resize_of_the_runtime_is_pytorchs():
    from torch.nn import functional as F

    from transferkit.runtime.onnx_segmenter import resize_bilinear

    maps = np.random.default_rng(0).normal(size=(3, 17, 23)).astype(np.float32)
    for height, width in ((56, 72), (17, 23), (9, 5), (40, 11), (1, 1)):
        expected = F.interpolate(torch.from_numpy(maps)[None], size=(height, width),
                                 mode="bilinear", align_corners=False)[0].numpy()
        assert np.abs(resize_bilinear(maps, height, width) - expected).max() < 1e-5


def test_a_segmentation_file_is_refused_by_the_classifier_commands(exported, discs, capsys):
    onnx_path, _ = exported
    _, (images, _) = discs
    err = _one_line_error(capsys, ["predict", str(onnx_path), str(images)])
    assert "segmentation model" in err and "segment predict" in err
    err = _one_line_error(capsys, ["serve", str(onnx_path), "--port", "0"])
    assert "segmentation model" in err


def segment_size(onnx_path):
    from transferkit.runtime import OnnxSegmenter

    return OnnxSegmenter(onnx_path).input_size


def test_a_tampered_segmentation_file_is_one_line(exported, discs, tmp_path, capsys):
    import onnx

    onnx_path, _ = exported
    _, (images, masks) = discs
    size = json.dumps(list(segment_size(onnx_path)))
    cropped = json.dumps([{"name": "images", "resize_rule": {
        "resize": "shorter_side", "resize_to": [int(json.loads(size)[0])] * 2,
        "crop": json.loads(size), "interpolation": "bilinear"}}])
    for key, value in (("task", '"classification"'), ("task", '"cells"'),
                       ("classes", "[0, 1, 2]"), ("input_size", "[32, 32]"),
                       ("inputs", cropped), ("classes", json.dumps(list(range(300))))):
        model = onnx.load(str(onnx_path))
        for prop in model.metadata_props:
            if prop.key == key:
                prop.value = value
        edited = tmp_path / f"{key}-{len(value)}.onnx"
        onnx.save(model, str(edited))
        if value == '"classification"':  # now a "classifier" whose output is per pixel
            err = _one_line_error(capsys, ["predict", str(edited), str(images)])
        else:
            err = _one_line_error(capsys, ["segment", "evaluate", str(edited), str(images),
                                           str(masks)])
        assert str(edited) in err, (key, value, err)


def test_a_model_folder_named_like_an_onnx_file_is_read_as_a_folder(fitted, discs, tmp_path):
    import shutil

    out, _ = fitted
    _, (images, masks) = discs
    folder = tmp_path / "lesions.onnx"
    shutil.copytree(out, folder)
    assert segment.evaluate(folder, images, masks)["dice"] == segment.evaluate(out, images, masks)["dice"]
