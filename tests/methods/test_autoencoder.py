"""Autoencoder pretraining: the loss falls, the encoder really initialises the classifier,
the reconstruction figure is written, bad input gives clear errors, and the CLI job runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone

from transferkit.cli import main
from transferkit.data.digits import DigitDomain, write_image_folder
from transferkit.errors import DataError
from transferkit.methods.autoencoder import AutoencoderInitialisedClassifier, ConvAutoencoder
from transferkit.methods.domain._deep_base import DeepSourceOnly

torch.set_num_threads(1)


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coloured squares (0) and crosses (1) on coloured backgrounds, 32×32 RGB uint8."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i, label in enumerate(labels):
        background = rng.integers(0, 256, 3)
        images[i] = background
        x, y = rng.integers(6, 18, 2)
        if label == 0:
            images[i, y:y + 10, x:x + 10] = 255 - background
        else:
            images[i, y + 4:y + 6, x:x + 10] = 255 - background
            images[i, y:y + 10, x + 4:x + 6] = 255 - background
    return images, labels


@pytest.fixture(scope="module")
def tiny():
    return blobs(64, 0)


@pytest.fixture(scope="module")
def fitted(tiny):
    images, _ = tiny
    return ConvAutoencoder(epochs=6, batch_size=16, lr=3e-3, val_fraction=0.0,
                           device="cpu").fit(images)


def test_reconstruction_loss_falls_on_a_tiny_dataset(tiny, fitted):
    images, _ = tiny
    untrained = ConvAutoencoder(epochs=1, batch_size=16, lr=0.0, val_fraction=0.0,
                                device="cpu").fit(images)  # lr 0: the initial weights
    before, after = untrained.reconstruction_error(images), fitted.reconstruction_error(images)
    assert after < 0.5 * before
    losses = [row["train_loss"] for row in fitted.history_]
    assert losses[-1] < 0.5 * losses[0]
    assert fitted.score(images) == pytest.approx(-after)
    assert fitted.transform(images[:5]).shape == (5, 1200) == (5, fitted.n_features_)
    reconstructed = fitted.reconstruct(images[:3])
    assert reconstructed.shape == (3, 32, 32, 3)
    assert 0.0 <= reconstructed.min() <= reconstructed.max() <= 1.0


def test_contrast_normalised_target_ignores_colour_and_contrast(tiny):
    images, _ = tiny
    normalise = ConvAutoencoder(contrast_normalise=True)._target
    x = torch.from_numpy(images[:4].astype(np.float32) / 255.0).permute(0, 3, 1, 2) * 2 - 1
    target = normalise(x)
    assert float(target.abs().max()) <= 1.0
    noisy = 0.1 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) + \
        torch.tensor([0.5, -0.3, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(normalise(noisy).mean(dim=(2, 3)), torch.zeros(2, 3), atol=0.02)
    assert float(normalise(noisy).std()) == pytest.approx(0.5, abs=0.05)
    # A colour cast and a contrast change of the whole image leave the target as it was.
    shifted = 0.5 * x + torch.tensor([0.3, -0.2, 0.1]).view(1, 3, 1, 1)
    assert torch.allclose(normalise(shifted), target, atol=1e-2)
    flat = torch.full((1, 3, 32, 32), 0.4)
    assert float(normalise(flat).abs().max()) < 1e-3  # no contrast: a flat target
    assert torch.equal(ConvAutoencoder()._target(x), x)  # the plain autoencoder: t(x) = x


def test_encoder_weights_are_copied_into_the_classifier_before_training(tiny, fitted):
    images, labels = tiny
    classifier = AutoencoderInitialisedClassifier(fitted, device="cpu", random_state=3)
    classifier.classes_, classifier.autoencoder_ = np.array([0, 1]), fitted
    network = classifier._new_network()
    encoder = fitted.encoder_state_dict()
    assert set(network.features.state_dict()) == set(encoder)
    for name, tensor in network.features.state_dict().items():
        assert torch.equal(tensor, encoder[name]), name
    # The head is the random-initialisation baseline's, for the same seed.
    baseline = DeepSourceOnly(random_state=3)
    baseline.classes_ = np.array([0, 1])
    scratch = baseline._new_network()
    for name, tensor in network.classifier.state_dict().items():
        assert torch.equal(tensor, scratch.classifier.state_dict()[name]), name
    assert not torch.equal(scratch.features[0].weight, encoder["0.weight"])

    # Through fit: with a zero learning rate the weights that come out are the encoder's.
    still = AutoencoderInitialisedClassifier(fitted, epochs=1, lr=0.0, val_fraction=0.0,
                                             device="cpu").fit(images, labels)
    assert still.autoencoder_ is fitted  # a fitted autoencoder is used, not refitted
    for name, parameter in still.model_.features.named_parameters():
        assert torch.equal(parameter, encoder[name]), name


def test_frozen_encoder_stays_bitwise_unchanged_and_training_moves_it_otherwise(tiny, fitted):
    images, labels = tiny
    encoder = fitted.encoder_state_dict()
    frozen = AutoencoderInitialisedClassifier(fitted, epochs=2, batch_size=16, lr=1e-2,
                                              encoder_lr_factor=0.0, val_fraction=0.0,
                                              device="cpu").fit(images, labels)
    for name, tensor in frozen.model_.features.state_dict().items():
        assert torch.equal(tensor, encoder[name]), name
    tuned = AutoencoderInitialisedClassifier(fitted, epochs=2, batch_size=16, lr=1e-2,
                                             val_fraction=0.0, device="cpu").fit(images, labels)
    assert not torch.equal(tuned.model_.features[0].weight, encoder["0.weight"])
    assert tuned.predict(images[:4]).shape == (4,)
    # The fitted autoencoder given as a parameter is untouched by fitting the classifier.
    assert torch.equal(fitted.model_.encoder[0].weight, encoder["0.weight"])


def test_head_first_stage_keeps_the_encoder_frozen_then_fine_tunes_it(tiny, fitted, tmp_path):
    images, labels = tiny
    encoder = fitted.encoder_state_dict()
    options = dict(batch_size=16, lr=1e-2, val_fraction=0.0, device="cpu", random_state=1)
    # All epochs in the head stage: the encoder, BatchNorm statistics included, is bitwise
    # the autoencoder's, while the head has trained.
    head_only = AutoencoderInitialisedClassifier(fitted, epochs=2, head_first_epochs=2,
                                                 **options).fit(images, labels)
    for name, tensor in head_only.model_.features.state_dict().items():
        assert torch.equal(tensor, encoder[name]), name
    start = AutoencoderInitialisedClassifier(fitted, **options)
    start.classes_, start.autoencoder_ = np.array([0, 1]), fitted
    initial_head = start._new_network().classifier
    assert not torch.equal(head_only.model_.classifier[0].weight, initial_head[0].weight)
    # Head stage then fine-tuning: the encoder moves in the second stage, the epochs are
    # numbered on through both, and each stage logs to its own sub-folder.
    staged = AutoencoderInitialisedClassifier(fitted, epochs=3, head_first_epochs=2,
                                              run_dir=str(tmp_path / "run"),
                                              **options).fit(images, labels)
    assert not torch.equal(staged.model_.features[0].weight, encoder["0.weight"])
    assert [row["epoch"] for row in staged.history_] == [1, 2, 3]
    assert (tmp_path / "run" / "head" / "metrics.csv").is_file()
    assert (tmp_path / "run" / "finetune" / "metrics.csv").is_file()
    assert all(p.requires_grad for p in staged.model_.parameters())
    with pytest.raises(DataError, match="head_first_epochs"):
        AutoencoderInitialisedClassifier(fitted, epochs=2, head_first_epochs=3,
                                         **options).fit(images, labels)


def test_an_unfitted_autoencoder_is_pretrained_on_the_unlabelled_images(tiny, tmp_path):
    images, labels = tiny
    template = ConvAutoencoder(epochs=1, batch_size=32, val_fraction=0.0, device="cpu")
    model = AutoencoderInitialisedClassifier(template, epochs=1, batch_size=16,
                                             val_fraction=0.0, device="cpu",
                                             run_dir=str(tmp_path / "run"))
    model.fit(images[:16], labels[:16], X_unlabelled=images[16:])
    assert not hasattr(template, "model_")  # the parameter itself stays unfitted
    assert hasattr(model.autoencoder_, "model_")
    assert (tmp_path / "run" / "pretrain" / "metrics.csv").is_file()
    assert (tmp_path / "run" / "finetune" / "metrics.csv").is_file()
    assert clone(model).get_params()["autoencoder"].get_params() == template.get_params()


def test_reconstruction_figure_is_written(tiny, fitted, tmp_path):
    images, _ = tiny
    path = fitted.save_reconstructions(images, tmp_path / "figures" / "reconstructions.png", n=8)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as picture:
        width, height = picture.size
    assert width > height > 100


def test_bad_input_gives_clear_errors(tiny, fitted):
    images, labels = tiny
    with pytest.raises(DataError, match="32×32"):
        ConvAutoencoder(epochs=1).fit(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match="at least two images"):
        ConvAutoencoder(epochs=1).fit(images[:1])
    with pytest.raises(DataError, match="noise"):
        ConvAutoencoder(epochs=1, noise=-1.0).fit(images)
    with pytest.raises(DataError, match="labels"):
        AutoencoderInitialisedClassifier(fitted).fit(images, labels[:-1])
    with pytest.raises(DataError, match="width"):
        AutoencoderInitialisedClassifier(fitted, width=2, epochs=1).fit(images, labels)
    with pytest.raises(DataError, match="ConvAutoencoder"):
        AutoencoderInitialisedClassifier("encoder.pt", epochs=1).fit(images, labels)
    with pytest.raises(Exception, match="not fitted"):
        ConvAutoencoder().transform(images)


@pytest.fixture
def folders(tmp_path):
    def domain(n, seed):
        images, labels = blobs(n, seed)
        return DigitDomain("blobs", images, labels.astype(np.int64),
                           np.arange(n, dtype=np.int64) + 1000 * seed)

    write_image_folder(domain(48, 1), tmp_path / "unlabelled")
    write_image_folder(domain(12, 2), tmp_path / "labelled")
    write_image_folder(domain(16, 3), tmp_path / "test")
    return tmp_path


def test_cli_job_writes_summary_and_reconstructions(folders, capsys):
    (folders / "unlabelled" / "0" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = folders / "run"
    assert main(["autoencoder", "--unlabelled", str(folders / "unlabelled"),
                 "--labelled", str(folders / "labelled"), "--test", str(folders / "test"),
                 "--out", str(out), "--epochs", "1", "--finetune-epochs", "1", "--device", "cpu",
                 "--contrast-normalise",
                 "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_unlabelled"] == 48 and summary["n_labelled"] == 12
    assert summary["n_test"] == 16 and summary["n_skipped"] == 1
    assert summary["contrast_normalise"] is True
    for value in summary["accuracy"].values():
        assert 0.0 <= value <= 1.0
    assert (out / "reconstructions.png").is_file()
    assert json.loads((out / "summary.json").read_text())["accuracy"] == summary["accuracy"]

    assert main(["autoencoder", "--unlabelled", str(folders / "nowhere"),
                 "--labelled", str(folders / "labelled"), "--out", str(out)]) == 2
    assert "not a folder" in capsys.readouterr().err
