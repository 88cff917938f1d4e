"""One-/few-shot learning: EER threshold, prototypes, contrastive loss, Siamese head, CLI."""

import json
import shutil

import numpy as np
import pytest
import torch

from builders import write_class_folder
from transferkit.cli import main
from transferkit.errors import DataError
from transferkit.evaluate.metrics import equal_error_rate
from transferkit.methods.fewshot.prototypes import PrototypeClassifier
from transferkit.methods.fewshot.siamese import SiameseSimilarity, contrastive_loss, triplet_loss

torch.set_num_threads(1)


def rates(same, scores, threshold):
    """(false-accept rate, false-reject rate) when "same" means score >= threshold."""
    same, scores = np.asarray(same, bool), np.asarray(scores, float)
    return (scores[~same] >= threshold).mean(), (scores[same] < threshold).mean()


def test_eer_threshold_sits_where_far_and_frr_cross():
    # Genuine pairs 0.9 0.8 0.7 0.35, impostors 0.6 0.3 0.2 0.1: lowering the threshold
    # from 0.9, FRR falls 0.75 → 0.5 → 0.25 while FAR stays 0, and at 0.6 the first
    # impostor gets in: FAR = FRR = 1/4. Above 0.6 FAR < FRR; at 0.35 FAR > FRR.
    scores = [0.9, 0.8, 0.7, 0.35, 0.6, 0.3, 0.2, 0.1]
    same = [1, 1, 1, 1, 0, 0, 0, 0]
    eer, threshold = equal_error_rate(same, scores)
    assert threshold == pytest.approx(0.6)
    assert eer == pytest.approx(0.25)
    far, frr = rates(same, scores, threshold)
    assert far == pytest.approx(frr) == pytest.approx(eer)
    far_above, frr_above = rates(same, scores, threshold + 0.05)
    assert far_above < frr_above
    far_low, frr_low = rates(same, scores, 0.35)
    assert far_low > frr_low


def test_eer_interpolates_between_scores_on_the_det_curve():
    # Genuine 0.9 0.5 0.4, impostors 0.8 0.7 0.2 0.1: at 0.7 FAR 1/2 < FRR 2/3, at 0.5
    # FAR 1/2 > FRR 1/3; FAR - FRR goes -1/6 → +1/6, so they cross half-way: EER 1/2 at 0.6.
    eer, threshold = equal_error_rate([1, 1, 1, 0, 0, 0, 0], [0.9, 0.5, 0.4, 0.8, 0.7, 0.2, 0.1])
    assert eer == pytest.approx(0.5)
    assert threshold == pytest.approx(0.6)


def test_prototype_is_the_mean_of_the_support_features():
    support = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    model = PrototypeClassifier(metric="euclidean").fit(support, ["a", "a", "b", "b"])
    assert np.allclose(model.prototypes_, [[2.0, 0.0], [0.0, 3.0]])
    assert list(model.n_shots_) == [2, 2]
    query = np.array([[1.9, 0.2], [0.5, 2.5]])
    # squared distances to (2, 0) and (0, 3): 0.05 and 11.45; 8.5 and 0.5
    assert np.allclose(model.class_distances(query), [[0.05, 11.45], [8.5, 0.5]])
    assert list(model.predict(query)) == ["a", "b"]
    weights = np.exp(-np.array([0.05, 11.45]))
    assert np.allclose(model.predict_proba(query)[0], weights / weights.sum())
    # The nearest support example can disagree with the nearest prototype.
    spread = np.array([[0.0, 0.0], [12.0, 0.0], [4.0, 0.0], [6.0, 0.0]])  # means 6 and 5
    labels = ["far", "far", "near", "near"]
    point = np.array([[0.5, 0.0]])
    assert PrototypeClassifier("euclidean").fit(spread, labels).predict(point)[0] == "near"
    assert PrototypeClassifier("euclidean", rule="nearest").fit(spread, labels).predict(point)[0] == "far"


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_one_shot_prototype_equals_nearest_neighbour(metric):
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    support = rng.normal(size=(20, 16))
    labels = np.array([f"c{i:02d}" for i in range(20)])
    query = rng.normal(size=(200, 16))
    prototype = PrototypeClassifier(metric=metric).fit(support, labels).predict(query)
    nearest = PrototypeClassifier(metric=metric, rule="nearest").fit(support, labels).predict(query)
    knn = KNeighborsClassifier(1, metric=metric).fit(support, labels).predict(query)
    assert (prototype == nearest).all() and (prototype == knn).all()


def test_contrastive_and_triplet_loss_hand_values():
    # same pair at distance 0.5: 0.5²; different pairs at 0.2 and 1.5 (margin 1): 0.8², 0
    loss = contrastive_loss(torch.tensor([0.5, 0.2, 1.5]), torch.tensor([1, 0, 0]), margin=1.0)
    assert float(loss) == pytest.approx((0.25 + 0.64 + 0.0) / 2 / 3)
    # max(0, 0.5 - 0.7 + 1) = 0.8 and max(0, 0.1 - 1.5 + 1) = 0
    loss = triplet_loss(torch.tensor([0.5, 0.1]), torch.tensor([0.7, 1.5]), margin=1.0)
    assert float(loss) == pytest.approx(0.4)


def nuisance_classes(n_classes, per_class, seed, dim=24, signal=3):
    """Classes differ in ``signal`` dimensions only; the others carry big class-independent
    noise, so raw cosine similarity barely tells the classes apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, signal)) * 2.0
    labels = np.repeat(np.arange(n_classes), per_class)
    x = rng.normal(size=(len(labels), dim)) * 3.0
    x[:, :signal] = centres[labels] + 0.3 * rng.normal(size=(len(labels), signal))
    return x.astype(np.float32), labels


def pair_similarities(model, x, labels, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(x), 600)
    b = rng.integers(0, len(x), 600)
    keep = a != b
    a, b = a[keep], b[keep]
    return model.similarity_features(x[a], x[b]), labels[a] == labels[b]


@pytest.fixture(scope="module")
def trained():
    x, y = nuisance_classes(40, 10, seed=0)
    model = SiameseSimilarity(epochs=20, hidden=32, embedding_dim=8, batch_size=32, lr=1e-2,
                              dropout=0.0, val_fraction=0.2, device="cpu").fit_features(x, y)
    return model


def test_siamese_makes_same_class_pairs_more_similar_on_unseen_classes(trained):
    x, y = nuisance_classes(20, 10, seed=1)  # classes never seen in training
    similarity, same = pair_similarities(trained, x, y)
    assert similarity[same].mean() - similarity[~same].mean() > 0.5
    # One-shot classification in the learned space beats the raw features.
    support = np.array([np.flatnonzero(y == k)[0] for k in range(20)])
    query = np.setdiff1d(np.arange(len(y)), support)
    raw = PrototypeClassifier().fit(x[support], y[support]).score(x[query], y[query])
    embedded = trained.transform_features(x)
    learned = PrototypeClassifier().fit(embedded[support], y[support]).score(embedded[query], y[query])
    assert learned > raw + 0.2
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)


def test_verification_threshold_is_the_equal_error_point_of_validation_pairs(trained):
    assert trained.best_epoch_ is not None and "held-out classes" in trained.validation_
    assert -1.0 <= trained.threshold_ <= 1.0 and trained.eer_ < 0.2
    x, y = nuisance_classes(20, 10, seed=2)
    similarity, same = pair_similarities(trained, x, y)
    model = SiameseSimilarity(**trained.get_params())
    model.model_, model.n_features_in_ = trained.model_, trained.n_features_in_
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(x), 600), rng.integers(0, len(x), 600)
    model.calibrate_features(x[a], x[b], y[a] == y[b])
    scores = model.similarity_features(x[a], x[b])
    assert (model.eer_, model.threshold_) == equal_error_rate(y[a] == y[b], scores)
    far, frr = rates(y[a] == y[b], scores, model.threshold_)
    assert abs(far - frr) < 0.1
    verified = model.verify_features(x[a], x[b])
    assert (verified == (scores >= model.threshold_)).all()


def test_clear_errors():
    x, _ = nuisance_classes(5, 1, seed=0)
    with pytest.raises(DataError, match="only one image"):
        SiameseSimilarity(epochs=1).fit_features(x, np.arange(5))
    with pytest.raises(DataError, match="at least two classes"):
        SiameseSimilarity(epochs=1).fit_features(x, np.zeros(5))
    with pytest.raises(DataError, match="unknown loss"):
        SiameseSimilarity(loss="hinge").fit_features(x, np.arange(5))
    with pytest.raises(DataError, match="at least two classes"):
        PrototypeClassifier().fit(x, np.zeros(5))
    with pytest.raises(DataError, match="unknown metric"):
        PrototypeClassifier(metric="manhattan").fit(x, np.arange(5))


def test_save_and_load_a_similarity_bundle(tmp_path, tiny_checkpoint):
    from transferkit.bundle import load_bundle, save_bundle

    path, arch = tiny_checkpoint
    x, y = nuisance_classes(12, 6, seed=3)
    model = SiameseSimilarity(weights=str(path), arch=arch, epochs=2, hidden=16,
                              embedding_dim=4, device="cpu").fit_features(x, y)
    save_bundle(model, tmp_path / "sim")
    loaded = load_bundle(tmp_path / "sim")
    assert isinstance(loaded, SiameseSimilarity)
    assert loaded.threshold_ == model.threshold_ and loaded.eer_ == model.eer_
    assert np.allclose(loaded.transform_features(x), model.transform_features(x))


def test_fewshot_train_then_fewshot_with_the_learned_similarity(tmp_path, tiny_checkpoint, capsys):
    from transferkit.jobs.fewshot_train import run as fewshot_train

    path, arch = tiny_checkpoint
    # Nested background classes (alphabet/character/*.png, as Omniglot's).
    background = tmp_path / "background"
    write_class_folder(background / "alpha", per_class=4, classes=("red", "blue"))
    write_class_folder(background / "beta", per_class=4, classes=("green",), seed=3)
    with pytest.warns(UserWarning, match="no validation classes"):
        summary = fewshot_train([background], tmp_path / "sim", weights=str(path), arch=arch,
                                epochs=2, val_fraction=0.0, device="cpu", hidden=16,
                                embedding_dim=8)
    assert summary["n_classes"] == 3 and summary["n_images"] == 12
    assert (tmp_path / "sim" / "embedding.safetensors").is_file()
    support = write_class_folder(tmp_path / "support", per_class=1, classes=("red", "blue"), seed=7)
    query = write_class_folder(tmp_path / "query", per_class=2, classes=("red", "blue"), seed=8)
    assert main(["fewshot", "--support", str(support), "--query", str(query), "--similarity",
                 str(tmp_path / "sim"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["similarity"] == str(tmp_path / "sim") and result["n_query"] == 4
    assert result["threshold"] == summary["threshold"]
    assert all(isinstance(row["verified"], bool) for row in result["predictions"])


def test_fewshot_cli_on_image_folders(tmp_path, capsys):
    support = write_class_folder(tmp_path / "support", per_class=1, classes=("red", "blue", "green"))
    query = write_class_folder(tmp_path / "query", per_class=2, classes=("red", "blue", "green"),
                               seed=5)
    # The stem's features keep colour, which is what tells these classes apart.
    assert main(["fewshot", "--support", str(support), "--query", str(query), "--layer", "bn1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_way"] == 3 and result["k_shot"] == 1 and result["n_query"] == 6
    assert result["accuracy"] == 1.0 and result["layers"] == ["bn1"]
    assert {row["true"] for row in result["predictions"]} == {"red", "blue", "green"}
    # Unlabelled queries: predictions only.
    flat = tmp_path / "flat"
    flat.mkdir()
    for file in (query / "red").iterdir():
        shutil.copy(file, flat / f"red-{file.name}")
    assert main(["fewshot", "--support", str(support), "--query", str(flat), "--layer", "bn1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "accuracy" not in result and [row["predicted"] for row in result["predictions"]] == ["red"] * 2
    # Errors a user can fix: one line, exit status 2.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fewshot", "--support", str(support), "--query", str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err
    (query / "purple").mkdir()
    shutil.copy(next((query / "red").iterdir()), query / "purple" / "x.png")
    assert main(["fewshot", "--support", str(support), "--query", str(query)]) == 2
    assert "not classes of the support set" in capsys.readouterr().err
    assert main(["fewshot-train", str(support), "--out", str(tmp_path / "sim")]) == 2
    assert "only one image" in capsys.readouterr().err


def test_omniglot_one_shot_run_with_plain_features(shared_datasets, tmp_path):
    """One official run: 20 support characters, 20 queries; plain features beat chance."""
    from transferkit.jobs.fewshot import run as fewshot

    run = shared_datasets / "omniglot_small" / "one_shot_runs" / "run01"
    pairs = [line.split() for line in (run / "class_labels.txt").read_text().splitlines() if line.strip()]
    for query, support in pairs:
        name = support.rsplit("/", 1)[1].removesuffix(".png")
        (tmp_path / "support" / name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "query" / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(run.parent / support, tmp_path / "support" / name)
        shutil.copy(run.parent / query, tmp_path / "query" / name)
    result = fewshot(tmp_path / "support", tmp_path / "query", layer="blocks.4,blocks.5")
    assert result["n_way"] == 20 and result["n_query"] == 20
    assert result["accuracy"] >= 0.2  # chance is 0.05
