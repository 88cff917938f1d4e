"""Measures and protocols: EER, Wilson interval, CV / repeated hold-out, CDFG, negative transfer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedShuffleSplit, cross_val_score
from threadpoolctl import threadpool_limits

from builders import write_class_folder
from transferkit.errors import DataError
from transferkit.evaluate import (
    binary_scores,
    cross_validate,
    equal_error_rate,
    repeated_holdout,
    wilson_interval,
)
from transferkit.evaluate.cdfg import cdfg
from transferkit.evaluate.negative_transfer import negative_transfer_check
from transferkit.features.raw_pixels import RawPixelClassifier

# -- equal error rate ----------------------------------------------------------------------

# Hand-built scores: positives 0.9 0.8 0.5 0.2, negatives 0.6 0.5 0.3 0.1 (a tie at 0.5).
# Accept "score >= t":
#   t      FAR (neg >= t)   FRR (pos < t)   FAR - FRR
#   0.9    0/4              3/4             -3/4
#   0.8    0/4              2/4             -1/2
#   0.6    1/4              2/4             -1/4    <- last with FAR < FRR
#   0.5    2/4              1/4             +1/4    <- first with FAR >= FRR
# No threshold has FAR == FRR: they cross between 0.6 and 0.5. Linear interpolation:
# w = (1/4) / (1/4 + 1/4) = 1/2, FAR = 1/4 + w (2/4 - 1/4) = 3/8,
# FRR = 2/4 + w (1/4 - 2/4) = 3/8, so EER = 0.375 at t = 0.6 + w (0.5 - 0.6) = 0.55.
# Neither endpoint's rates (0.25 / 0.5 or 0.5 / 0.25) is the answer: the interpolation matters.
CROSSING_POS = [0.9, 0.8, 0.5, 0.2]
CROSSING_NEG = [0.6, 0.5, 0.3, 0.1]


def _labelled(positives, negatives):
    return [1] * len(positives) + [0] * len(negatives), list(positives) + list(negatives)


def test_eer_interpolates_between_thresholds():
    y, scores = _labelled(CROSSING_POS, CROSSING_NEG)
    eer, threshold = equal_error_rate(y, scores)
    assert eer == pytest.approx(0.375, abs=1e-12)
    assert threshold == pytest.approx(0.55, abs=1e-12)


def test_eer_at_an_exact_threshold():
    # positives 0.9 0.8 0.4, negatives 0.7 0.3 0.2: at t = 0.7 FAR = 1/3 (0.7 accepted),
    # FRR = 1/3 (0.4 rejected): equal, no interpolation; EER = 1/3 at 0.7.
    y, scores = _labelled([0.9, 0.8, 0.4], [0.7, 0.3, 0.2])
    eer, threshold = equal_error_rate(y, scores)
    assert eer == pytest.approx(1 / 3, abs=1e-12)
    assert threshold == pytest.approx(0.7)


def test_eer_perfectly_separable_is_zero():
    # Every positive above every negative: at t = 0.8 (the lowest positive) FAR = FRR = 0.
    y, scores = _labelled([0.9, 0.8, 0.85], [0.3, 0.1, 0.2])
    eer, threshold = equal_error_rate(y, scores)
    assert eer == 0.0
    assert 0.3 < threshold <= 0.8


def test_eer_perfectly_wrong_is_one():
    y, scores = _labelled([0.1, 0.2], [0.8, 0.9])
    assert equal_error_rate(y, scores)[0] == pytest.approx(1.0)


def test_eer_is_invariant_to_monotone_rescaling_and_to_swapping_the_classes():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60, int), np.zeros(90, int)]
    scores = np.r_[rng.normal(1.0, 1.0, 60), rng.normal(0.0, 1.0, 90)]
    eer = equal_error_rate(y, scores)[0]
    assert 0.2 < eer < 0.45  # d' = 1: the Gaussian EER is Φ(-1/2) ≈ 0.31
    assert equal_error_rate(y, np.exp(3 * scores))[0] == pytest.approx(eer, abs=1e-12)
    # Calling the negatives "positive" and negating the scores swaps FAR and FRR.
    assert equal_error_rate(1 - y, -scores)[0] == pytest.approx(eer, abs=1e-12)


def test_eer_needs_both_classes():
    with pytest.raises(ValueError):
        equal_error_rate([1, 1, 1], [0.2, 0.5, 0.9])


def test_binary_scores_on_the_hand_built_list():
    y, scores = _labelled(CROSSING_POS, CROSSING_NEG)
    result = binary_scores(y, scores)
    # AUC = P(pos > neg) + ½ P(tie) over the 16 pairs: 0.9 → 4, 0.8 → 4,
    # 0.5 → 2 + ½ (the tie), 0.2 → 1: 11.5 / 16.
    assert result["auc"] == pytest.approx(11.5 / 16)
    assert result["eer"] == pytest.approx(0.375)
    assert result["roc"]["fpr"][0] == 0.0 and result["roc"]["tpr"][-1] == 1.0


# -- Wilson interval -----------------------------------------------------------------------

@pytest.mark.parametrize("successes, n, low, high", [
    # Newcombe 1998, "Two-sided confidence intervals for the single proportion", Table I,
    # method 3 (Wilson score, no continuity correction).
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    # 8/10: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.7167,
    # half-width 1.96 √(0.8·0.2/10 + 1.96²/400) / 1.38416 = 0.2266.
    (8, 10, 0.4902, 0.9433),
])
def test_wilson_interval_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(low, abs=5e-5)
    assert hi == pytest.approx(high, abs=5e-5)


def test_wilson_interval_without_data_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# -- cross-validation and repeated hold-out -----------------------------------------------

def _noisy_problem(n_per_class=30, seed=0):
    rng = np.random.default_rng(seed)
    X = np.vstack([rng.normal(0.0, 1.0, (n_per_class, 3)), rng.normal(0.8, 1.0, (n_per_class, 3)),
                   rng.normal(-0.8, 1.0, (n_per_class, 3))])
    y = np.repeat(np.array(["a", "b", "c"]), n_per_class)
    return X, y


def test_cross_validate_mean_and_std_over_folds_times_repeats():
    X, y = _noisy_problem()
    estimator = LogisticRegression(max_iter=1000)
    result = cross_validate(estimator, X, y, folds=4, repeats=3, random_state=7)
    assert result["n_splits"] == 12 and len(result["splits"]) == 12
    # The same folds scored independently by scikit-learn.
    splitter = RepeatedStratifiedKFold(n_splits=4, n_repeats=3, random_state=7)
    expected = cross_val_score(clone(estimator), X, y, cv=splitter, scoring="balanced_accuracy")
    per_split = [split["balanced_accuracy"] for split in result["splits"]]
    np.testing.assert_allclose(per_split, expected)
    assert result["balanced_accuracy"]["mean"] == pytest.approx(expected.mean())
    assert result["balanced_accuracy"]["std"] == pytest.approx(expected.std(ddof=1))
    assert result["balanced_accuracy"]["std"] > 0  # a noisy problem: the splits disagree
    accuracy = cross_val_score(clone(estimator), X, y, cv=splitter, scoring="accuracy")
    assert result["accuracy"]["mean"] == pytest.approx(accuracy.mean())


def test_repeated_holdout_mean_and_std_over_repeats():
    X, y = _noisy_problem()
    estimator = LogisticRegression(max_iter=1000)
    result = repeated_holdout(estimator, X, y, test_size=0.3, repeats=6, random_state=3)
    assert result["n_splits"] == 6 and len(result["splits"]) == 6
    splitter = StratifiedShuffleSplit(n_splits=6, test_size=0.3, random_state=3)
    expected = cross_val_score(clone(estimator), X, y, cv=splitter, scoring="accuracy")
    assert result["accuracy"]["mean"] == pytest.approx(expected.mean())
    assert result["accuracy"]["std"] == pytest.approx(expected.std(ddof=1))


def test_cross_validate_refuses_too_few_examples_per_class():
    X, y = _noisy_problem(n_per_class=3)
    with pytest.raises(DataError, match="smallest class has 3"):
        cross_validate(LogisticRegression(), X, y, folds=5)


# -- CDFG ----------------------------------------------------------------------------------

def _blobs(n_per_class, seed, shift=0.0):
    """Two Gaussian classes at x0 = ±1.5 (sd 1) in 4-D; ``shift`` moves every point along x0."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, (2 * n_per_class, 4))
    y = np.repeat(np.array(["neg", "pos"]), n_per_class)
    X[:, 0] += np.where(y == "pos", 1.5, -1.5) + shift
    return X, y


def test_cdfg_of_identical_domains_is_zero():
    X, y = _blobs(60, seed=0)
    result = cdfg(X, y, X.copy(), y.copy(), random_state=0)
    assert result["g_comp"] == 0.0
    assert result["g_part_a"] == 0.0 and result["g_part_b"] == 0.0
    assert result["a_to_b"]["risk_own"] == result["a_to_b"]["risk_other"]


def test_cdfg_grows_with_a_planted_shift():
    # 500 per class: 300 held-out rows per domain keep the sampling noise of each risk
    # (sd ≈ 0.015) well below the steps between shifts.
    Xa, ya = _blobs(500, seed=1)
    base_b, yb = _blobs(500, seed=2)
    g_comp, risks = [], []
    for shift in (0.0, 1.0, 2.0, 3.0):
        result = cdfg(Xa, ya, base_b + np.array([shift, 0, 0, 0]), yb, random_state=0)
        g_comp.append(result["g_comp"])
        risks.append(result["a_to_b"]["risk_other"])
    # Expected A→B risk (Φ(-(1.5+s)) + Φ(-(1.5-s)))/2: 0.07, 0.16, 0.35, 0.47.
    assert g_comp[0] < 0.05  # same distribution, different sample: only sampling noise
    assert all(b > a for a, b in zip(g_comp, g_comp[1:])), g_comp
    assert g_comp[-1] > 0.3
    assert all(b > a for a, b in zip(risks, risks[1:])), risks


def test_cdfg_needs_the_same_classes_in_both_domains():
    Xa, ya = _blobs(20, seed=0)
    Xb, yb = _blobs(20, seed=1)
    yb = np.where(yb == "pos", "other", yb)
    with pytest.raises(DataError, match="classes"):
        cdfg(Xa, ya, Xb, yb)


# -- negative transfer ---------------------------------------------------------------------

def test_negative_transfer_flag_follows_which_model_is_worse(tmp_path):
    """A majority-class guess vs raw pixels on easy colour classes: the check must fire
    when the guess is the "transferred" model and stay silent the other way round."""
    data = write_class_folder(tmp_path / "data", per_class=10, classes=("red", "blue", "green"))
    paths = sorted(data.rglob("*.png"))
    labels = [p.parent.name for p in paths]
    guess = DummyClassifier(strategy="most_frequent")
    pixels = RawPixelClassifier(size=8, random_state=0)
    with threadpool_limits(limits=1, user_api="blas"):
        worse = negative_transfer_check(guess, paths, labels, baseline=pixels, folds=5, repeats=1)
        better = negative_transfer_check(pixels, paths, labels, baseline=guess, folds=5,
                                         repeats=1)
    assert worse["negative_transfer"] is True
    assert worse["baseline_balanced_accuracy"]["mean"] >= 0.8  # far above the guess's 1/3
    assert worse["transferred_balanced_accuracy"]["mean"] == pytest.approx(1 / 3)
    assert worse["p_value"] < 0.05 and worse["mean_difference"] < 0
    assert better["negative_transfer"] is False and better["mean_difference"] > 0
    assert better["baseline"] == "DummyClassifier"


def _write_small_digits(root, per_class=10, size=32, seed=0):
    """``per_class`` images of each class of scikit-learn's 8×8 digits, upscaled to
    ``size``×``size`` RGB PNGs in ``root/<digit>/``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for row in rng.choice(np.flatnonzero(digits.target == digit), per_class, replace=False):
            pixels = (digits.images[row] * (255 / 16)).astype(np.uint8)  # values 0..16
            path = folder / f"{row}.png"
            Image.fromarray(pixels).resize((size, size), Image.BILINEAR).convert("RGB").save(path)
            paths.append(path)
            labels.append(str(digit))
    return paths, labels


@pytest.mark.slow
def test_negative_transfer_fires_on_tiny_digits(tmp_path):
    """8×8 digits, 10 per class: EfficientNet-Lite0 features lose to raw pixels."""
    from transferkit.methods.linear_probe import LinearProbe

    paths, labels = _write_small_digits(tmp_path / "digits")
    # One BLAS thread: on these tiny problems it is as fast, and it does not thrash when
    # the machine's cores are busy. Both sides choose C by 3-fold CV (speed).
    with threadpool_limits(limits=1, user_api="blas"):
        result = negative_transfer_check(LinearProbe(backbone="efficientnet_lite0", cv=3),
                                         paths, labels, baseline=RawPixelClassifier(cv=3),
                                         folds=5, repeats=2, random_state=0)
    assert result["negative_transfer"] is True, result
    assert result["baseline"] == "RawPixelClassifier"
    assert (result["baseline_balanced_accuracy"]["mean"]
            > result["transferred_balanced_accuracy"]["mean"] + 0.05)
    assert result["p_value"] < 0.05


@pytest.mark.slow
def test_negative_transfer_does_not_fire_on_hymenoptera(shared_datasets):
    """Ants vs bees photographs: pretrained features beat raw pixels by far."""
    from transferkit.methods.linear_probe import LinearProbe

    root = shared_datasets / "hymenoptera" / "train"
    if not root.is_dir():
        pytest.skip("hymenoptera is absent from the shared datasets")
    paths, labels = [], []
    for name in ("ants", "bees"):
        files = sorted(p for p in (root / name).iterdir() if p.is_file())[:30]
        paths += files
        labels += [name] * len(files)
    with threadpool_limits(limits=1, user_api="blas"):
        result = negative_transfer_check(LinearProbe(backbone="efficientnet_lite0"), paths,
                                         labels, folds=5, repeats=1, random_state=0)
    assert result["negative_transfer"] is False, result
    assert result["mean_difference"] > 0.1
    assert result["transferred_balanced_accuracy"]["mean"] > 0.8


# -- command line: fit --check-negative-transfer, cdfg -------------------------------------

@pytest.fixture
def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return ["--weights", str(path), "--arch", arch]


def _run_json(capsys, *argv) -> dict:
    import json

    from transferkit.cli import main

    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "--json must print exactly one JSON object"
    return json.loads(out)


def test_fit_checks_negative_transfer(tmp_path, capsys, tiny):
    import json

    from transferkit.jobs.fit import render as render_fit

    data = write_class_folder(tmp_path / "data", per_class=10, classes=("red", "blue", "green"))
    (data / "red" / "corrupt.png").write_bytes(b"\x89PNG broken")  # skipped, not fatal
    out = tmp_path / "model"
    fit = _run_json(capsys, "fit", str(data), "--out", str(out), "--check-negative-transfer",
                    *tiny)
    check = fit["negative_transfer"]
    assert isinstance(check["negative_transfer"], bool)
    assert check["baseline"] == "RawPixelClassifier"
    assert 0.0 <= check["transferred_balanced_accuracy"]["mean"] <= 1.0
    assert 0.0 <= check["p_value"] <= 1.0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["negative_transfer"]["verdict"] == check["verdict"]
    assert "Negative-transfer check" in (out / "report.html").read_text(encoding="utf-8")

    print(render_fit(fit))  # what `fit` prints without --json
    printed = capsys.readouterr().out
    assert f"negative-transfer check: {check['verdict']}" in printed

    plain = _run_json(capsys, "fit", str(data), "--out", str(tmp_path / "m3"), "--no-report",
                      *tiny)
    assert "negative_transfer" not in plain  # only on request: it refits the model 10 times


def test_fit_refuses_negative_transfer_check_for_finetune(tmp_path, capsys, tiny):
    from transferkit.cli import main

    data = write_class_folder(tmp_path / "data", per_class=4)
    assert main(["fit", str(data), "--out", str(tmp_path / "m"), "--method", "finetune",
                 "--check-negative-transfer", "--quiet", *tiny]) == 2
    assert "negative-transfer check" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_cdfg_command(tmp_path, capsys, tiny):
    classes = ("red", "blue", "green")
    a = write_class_folder(tmp_path / "a", per_class=10, classes=classes, seed=0)
    b = write_class_folder(tmp_path / "b", per_class=10, classes=classes, seed=5)
    spaces = ["last", "fne", "stages", "pca64"]
    result = _run_json(capsys, "cdfg", "--domain-a", str(a), "--domain-b", str(b),
                       "--spaces", ",".join(spaces), *tiny)
    assert [row["space"] for row in result["rows"]] == spaces
    for row in result["rows"]:
        assert 0.0 <= row["g_comp"] <= 1.0
        assert row["g_comp"] == pytest.approx(0.5 * (row["g_part_a"] + row["g_part_b"]))
        assert row["n_a"] == row["n_b"] == 30
    assert result["classes"] == sorted(classes)

    same = _run_json(capsys, "cdfg", "--domain-a", str(a), "--domain-b", str(a), *tiny)
    assert [row["space"] for row in same["rows"]] == ["last", "fne"]
    assert all(row["g_comp"] == 0.0 for row in same["rows"])

    from transferkit.cli import main

    assert main(["cdfg", "--domain-a", str(a), "--domain-b", str(b), "--quiet", *tiny]) == 0
    printed = capsys.readouterr().out
    assert "G_comp" in printed and "fne" in printed


def test_cdfg_command_needs_matching_classes(tmp_path, capsys, tiny):
    from transferkit.cli import main

    a = write_class_folder(tmp_path / "a", per_class=4, classes=("red", "blue"))
    b = write_class_folder(tmp_path / "b", per_class=4, classes=("red", "green"))
    assert main(["cdfg", "--domain-a", str(a), "--domain-b", str(b), "--quiet", *tiny]) == 2
    err = capsys.readouterr().err
    assert "same classes" in err and "blue" in err and "green" in err
    assert main(["cdfg", "--domain-a", str(a), "--domain-b", str(a), "--spaces", "nope",
                 "--quiet", *tiny]) == 2
    assert "unknown feature space" in capsys.readouterr().err
