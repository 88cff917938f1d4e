"""Integration on real images from ../shared/datasets (skipped when absent)."""

import numpy as np

from transferkit import run
from transferkit.data import load_image


def test_hymenoptera_placeholder_gif_is_read_like_any_image(shared_datasets):
    gif = shared_datasets / "hymenoptera" / "train" / "ants" / "imageNotFound.gif"
    image = load_image(gif)
    assert image.mode == "RGB" and image.size == (300, 300)
    assert np.asarray(image).std() > 0


def test_hymenoptera_linear_probe_reaches_target(shared_datasets, tmp_path):
    summary = run.fit(shared_datasets / "hymenoptera", tmp_path / "model")
    assert summary["validation"] == "given"
    assert summary["n_train"] == 245 and summary["n_val"] == 153
    assert summary["n_skipped"] == 0
    assert summary["val_accuracy"] >= 0.94
    # Predicting the validation images again is a pure cache hit.
    again = run.evaluate(tmp_path / "model", shared_datasets / "hymenoptera")
    assert again["accuracy"] == summary["val_accuracy"]
