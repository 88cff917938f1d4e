"""Zero-shot learning (ESZSL): unit tests on synthetic features, one real-data CLI run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from transferkit.cli import main
from transferkit.errors import DataError
from transferkit.methods.zeroshot import (
    ZeroShotClassifier,
    clean_class_name,
    harmonic_mean,
    per_class_accuracy,
    read_attribute_table,
    read_descriptions,
)
from transferkit.jobs.zeroshot import evaluate_zeroshot, resolve_unseen, split_zeroshot

torch.set_num_threads(1)

CLASSES = [f"c{i}" for i in range(12)]
SEEN, UNSEEN = CLASSES[:8], CLASSES[8:]


def linear_problem(per_class=30, noise=0.3, seed=0):
    """Features are a noisy linear map of 5-d class vectors: what ESZSL assumes. (The seen
    classes must span the semantic space: V maps into the span of their vectors.)"""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(CLASSES), 5))
    mixing = rng.normal(size=(5, 30))
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    X = vectors[y] @ mixing + noise * rng.normal(size=(len(y), 30))
    return X, np.asarray(CLASSES, dtype=object)[y], dict(zip(CLASSES, vectors))


def fitted(**options):
    X, y, embeddings = linear_problem()
    seen = np.isin(y, SEEN)
    model = ZeroShotClassifier(**options).fit(X[seen], y[seen], embeddings)
    return model, X, y, embeddings


def test_unseen_only_never_predicts_a_seen_class():
    model, X, y, _ = fitted()
    # Every image, seen classes' included, must be named among the unseen candidates.
    assert set(model.predict(X, "unseen")) <= set(UNSEEN)
    assert set(model.predict(X, ["c9", "c11"])) <= {"c9", "c11"}
    assert model.decision_function(X, "unseen").shape == (len(X), len(UNSEEN))
    assert list(model.seen_classes_) == SEEN and list(model.unseen_classes_) == UNSEEN


def test_linear_problem_unseen_accuracy_far_above_chance():
    model, X, y, _ = fitted()
    unseen = np.isin(y, UNSEEN)
    accuracy = per_class_accuracy(y[unseen], model.predict(X[unseen], "unseen"))
    assert accuracy > 0.8 > 3 * (1 / len(UNSEEN))


def test_shuffled_class_vectors_lose_the_transfer():
    X, y, embeddings = linear_problem()
    shuffled = dict(zip(CLASSES, [embeddings[c] for c in np.roll(CLASSES, 3)]))
    seen = np.isin(y, SEEN)
    model = ZeroShotClassifier().fit(X[seen], y[seen], shuffled)
    unseen = ~seen
    assert per_class_accuracy(y[unseen], model.predict(X[unseen], "unseen")) < 0.5


def test_projection_and_hyperparameters_never_look_at_unseen_classes():
    X, y, embeddings = linear_problem()
    seen = np.isin(y, SEEN)
    with_unseen = ZeroShotClassifier().fit(X[seen], y[seen], embeddings)
    seen_only = ZeroShotClassifier().fit(X[seen], y[seen], {c: embeddings[c] for c in SEEN})
    assert (with_unseen.alpha_, with_unseen.beta_, with_unseen.calibration_) == \
        (seen_only.alpha_, seen_only.beta_, seen_only.calibration_)
    np.testing.assert_allclose(with_unseen.coef_, seen_only.coef_)
    assert with_unseen.cv_scores_ is not None  # "auto" chose them by class-wise folds


def test_calibration_is_subtracted_from_seen_classes_only():
    model, X, _, _ = fitted(alpha=1.0, beta=1.0, calibration=0.3)
    assert model.cv_scores_ is None and model.calibration_ == 0.3
    raw = model.decision_function(X[:5], "all", calibrated=False)
    cal = model.decision_function(X[:5], "all")
    is_seen = np.isin(model.classes_, SEEN)
    np.testing.assert_allclose(raw - cal, np.where(is_seen, 0.3, 0.0)[None].repeat(5, 0))


def test_harmonic_mean_and_per_class_accuracy_by_hand():
    assert harmonic_mean(0.6, 0.3) == pytest.approx(2 * 0.6 * 0.3 / 0.9)  # 0.4
    assert harmonic_mean(0.6, 0.3) == pytest.approx(0.4)
    assert harmonic_mean(1.0, 0.0) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    # class a: 1/2 right, class b: 2/2 right → (0.5 + 1) / 2, not 3/4 of the images.
    assert per_class_accuracy(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.75)
    assert per_class_accuracy(["a", "b", "b", "b"], ["b", "b", "b", "b"]) == pytest.approx(0.5)


def test_clean_class_name():
    assert clean_class_name("07_sunflower") == "sunflower"
    assert clean_class_name("02_lily_valley") == "lily valley"
    assert clean_class_name("golden-retriever") == "golden retriever"
    assert clean_class_name("42") == "42"


def test_attribute_table_matches_folder_names(tmp_path):
    table = tmp_path / "attributes.csv"
    table.write_text("class,yellow,bell\nsunflower,1,0\n03_bluebell,0,1\nlily valley,0,0.5\n")
    vectors = read_attribute_table(table, ["09_sunflower", "03_bluebell", "02_lily_valley"])
    np.testing.assert_array_equal(vectors, [[1, 0], [0, 1], [0, 0.5]])


def test_attribute_table_errors(tmp_path):
    table = tmp_path / "attributes.csv"
    table.write_text("class,yellow\nsunflower,1\n")
    with pytest.raises(DataError, match=r"no row for class\(es\) \['tulip'\]"):
        read_attribute_table(table, ["sunflower", "tulip"])
    table.write_text("class,yellow\nsunflower,very\n")
    with pytest.raises(DataError, match="line 2: attribute values must be numbers"):
        read_attribute_table(table, ["sunflower"])
    table.write_text("class,yellow\nsunflower,1\nsunflower,0\n")
    with pytest.raises(DataError, match="two rows"):
        read_attribute_table(table, ["sunflower"])
    with pytest.raises(DataError, match="cannot read"):
        read_attribute_table(tmp_path / "missing.csv", ["sunflower"])


def test_descriptions_table(tmp_path):
    table = tmp_path / "descriptions.csv"
    table.write_text('class,description\nsunflower,"big, yellow"\ndaisy,white petals\n')
    assert read_descriptions(table, ["09_sunflower", "10_daisy"]) == ["big, yellow", "white petals"]
    table.write_text("class,description\nsunflower,\n")
    with pytest.raises(DataError, match="non-empty description"):
        read_descriptions(table, ["sunflower"])


def test_clear_errors():
    X, y, embeddings = linear_problem()
    with pytest.raises(DataError, match="at least two seen classes"):
        ZeroShotClassifier().fit(X[y == "c0"], y[y == "c0"], embeddings)
    with pytest.raises(DataError, match=r"training class\(es\) \['c0'\]"):
        ZeroShotClassifier().fit(X, y, {c: embeddings[c] for c in CLASSES[1:]})
    with pytest.raises(DataError, match="alpha must be 'auto' or a positive number"):
        ZeroShotClassifier(alpha=0).fit(X, y, embeddings)
    model, X, _, _ = fitted()
    with pytest.raises(DataError, match=r"candidate class\(es\) \['nope'\]"):
        model.predict(X, ["c9", "nope"])
    with pytest.raises(DataError, match="no candidate classes"):
        ZeroShotClassifier().fit(X, y, embeddings).predict(X, "unseen")  # all classes seen
    with pytest.raises(DataError, match=r"unseen class\(es\) \['rose'\] are not classes"):
        resolve_unseen(["00_daisy", "01_tulip", "02_iris", "03_pansy"], "daisy,rose")
    with pytest.raises(DataError, match="at least two classes must stay seen"):
        resolve_unseen(["00_daisy", "01_tulip", "02_iris", "03_pansy"], "daisy,tulip,iris")
    with pytest.raises(DataError, match="at least two unseen classes"):
        resolve_unseen(["00_daisy", "01_tulip", "02_iris", "03_pansy"], "daisy, 00_daisy")


def test_resolve_unseen_and_split():
    classes = [f"{i:02d}_flower{i}" for i in range(10)]
    assert resolve_unseen(classes, "flower3, 01_flower1") == ["01_flower1", "03_flower3"]
    picked = resolve_unseen(classes, None, 0.3, random_state=1)
    assert len(picked) == 3 and picked == resolve_unseen(classes, None, 0.3, random_state=1)
    labels = np.repeat(np.array(["a", "b", "c"], dtype=object), 10)
    train, test, unseen = split_zeroshot(labels, ["c"], 0.2, random_state=0)
    assert set(labels[unseen]) == {"c"} and len(test) == 4 and len(train) == 16
    assert not set(train) & set(test) and set(labels[test]) == {"a", "b"}


def test_evaluate_zeroshot_summary():
    X, y, embeddings = linear_problem()
    summary = evaluate_zeroshot(X, y, CLASSES, np.vstack([embeddings[c] for c in CLASSES]),
                                UNSEEN, random_state=0)
    assert summary["zero_shot"]["chance"] == pytest.approx(0.25)
    assert summary["zero_shot"]["accuracy"] > 0.8
    gzsl = summary["generalised"]
    assert gzsl["harmonic_mean"] == pytest.approx(harmonic_mean(gzsl["seen"], gzsl["unseen"]))
    assert gzsl["chance"] == pytest.approx(1 / 12)
    json.dumps(summary)


@pytest.mark.slow
def test_cli_zeroshot_on_flowers_subset(shared_datasets, tmp_path, capsys):
    """``transferkit zeroshot`` end to end on 5 flower classes × 4 images: bundled backbone,
    class descriptions embedded offline by the bundled sentence model."""
    source = shared_datasets / "oxford17flowers" / "all"
    names = ["00_daffodil", "03_bluebell", "09_sunflower", "10_daisy", "16_pansy"]
    for name in names:
        (tmp_path / "data" / name).mkdir(parents=True)
        for path in sorted((source / name).iterdir())[:4]:
            shutil.copy(path, tmp_path / "data" / name / path.name)
    descriptions = tmp_path / "descriptions.csv"
    descriptions.write_text("class,description\ndaffodil,a yellow trumpet flower\n"
                            "bluebell,blue bells hanging from a stem\n"
                            "sunflower,\"a huge flower, yellow petals, dark centre\"\n"
                            "daisy,white petals around a yellow centre\n"
                            "pansy,purple and yellow petals with a dark face\n")
    assert main(["zeroshot", str(tmp_path / "data"), "--unseen", "sunflower,bluebell",
                 "--descriptions", str(descriptions), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["unseen"] == ["03_bluebell", "09_sunflower"]
    assert result["seen"] == ["00_daffodil", "10_daisy", "16_pansy"]
    assert result["zero_shot"]["chance"] == 0.5 and result["n_unseen_test"] == 8
    assert set(result["zero_shot"]["per_class"]) == {"03_bluebell", "09_sunflower"}
    assert "descriptions.csv" in result["semantic"]
    # Unknown class: a one-line error before any feature is extracted.
    assert main(["zeroshot", str(tmp_path / "data"), "--unseen", "rose,daisy"]) == 2
    assert "error: unseen class(es) ['rose']" in capsys.readouterr().err


@pytest.mark.slow
def test_sentence_model_embeds_cleaned_names_offline():
    from transferkit.methods.zeroshot import embed_class_names

    vectors = embed_class_names(["09_sunflower", "sunflowers", "07_tulip"], "{name}")
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    with pytest.raises(DataError, match="no {name} placeholder"):
        embed_class_names(["daisy"], "a photo of a flower")
