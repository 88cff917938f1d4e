"""Label-free model selection (evaluate/selection.py): soft neighbourhood density (SND) and
deep embedded validation (DEV)."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.errors import DataError
from transferkit.evaluate.selection import density_ratios, dev_risk, snd

# -- SND -----------------------------------------------------------------------------------


def _entropy(q):
    q = np.asarray(q, float)
    return float(-(q[q > 0] * np.log(q[q > 0])).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_snd_matches_a_hand_computation_on_three_rows(temperature):
    P = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    # L2-normalised rows: e1, e2, (e1 + e2)/√2.
    # Similarities: ⟨1,2⟩ = 0, ⟨1,3⟩ = ⟨2,3⟩ = 1/√2.
    s = 1 / np.sqrt(2)

    def neighbour_entropy(similarities):
        e = np.exp(np.array(similarities) / temperature)
        return _entropy(e / e.sum())

    expected = np.mean([neighbour_entropy([0, s]), neighbour_entropy([0, s]),
                        neighbour_entropy([s, s])])  # row 3: both neighbours equally close
    assert neighbour_entropy([s, s]) == pytest.approx(np.log(2))
    assert snd(P, temperature=temperature) == pytest.approx(expected, rel=1e-9)


def test_snd_does_not_depend_on_the_order_of_the_rows():
    P = np.random.default_rng(0).dirichlet(np.ones(4), 50)
    shuffled = P[np.random.default_rng(1).permutation(50)]
    assert snd(shuffled) == pytest.approx(snd(P), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snd_ranks_clustered_predictions_above_scattered_ones(seed):
    """Saito et al.'s argument: a well-adapted model puts each target image in a dense
    cluster of its class, so its neighbours share similarity evenly (high entropy); a
    poorly adapted one scatters the predictions over the simplex (low entropy)."""
    rng = np.random.default_rng(seed)
    n, classes = 300, 4
    concentrations = 0.3 + 20 * np.eye(classes)[rng.integers(0, classes, n)]
    clustered = np.array([rng.dirichlet(alpha) for alpha in concentrations])
    scattered = rng.dirichlet(np.ones(classes), n)
    assert snd(clustered) > snd(scattered)


def test_snd_scores_a_collapse_the_maximum():
    """The criterion's known blind spot (said in selection.py's docstring): all rows the
    same prediction makes every neighbour equally close, entropy log(n − 1)."""
    collapsed = np.tile([0.9, 0.05, 0.05], (40, 1))
    assert snd(collapsed) == pytest.approx(np.log(39), rel=1e-9)


# -- DEV -----------------------------------------------------------------------------------


def _gaussian(rng, n, shift=0.0):
    return rng.normal(size=(n, 2)) + np.array([shift, 0.0])


@pytest.mark.parametrize("seed", [0, 1])
def test_without_shift_the_weights_are_one_and_dev_is_the_mean_loss(seed):
    rng = np.random.default_rng(seed)
    train, val, target = _gaussian(rng, 400), _gaussian(rng, 400), _gaussian(rng, 400)
    weights = density_ratios(train, target, val)
    assert abs(weights.mean() - 1) < 0.05 and weights.std() < 0.15
    losses = (val[:, 0] < 0.5).astype(float)  # a model that errs left of x1 = 0.5
    assert dev_risk(val, losses, target, train) == pytest.approx(losses.mean(), abs=0.05)
    assert dev_risk(val, losses, target) == pytest.approx(losses.mean(), abs=0.05)  # split


def test_dev_estimates_the_target_risk_where_the_source_risk_cannot():
    """Two models with the same source risk, one wrong where the target lies and one wrong
    where it does not: DEV tells them apart and approximates each one's target risk."""
    rng = np.random.default_rng(0)
    train, val = _gaussian(rng, 600), _gaussian(rng, 600)
    target, target_test = _gaussian(rng, 600, shift=1.5), _gaussian(rng, 2000, shift=1.5)
    wrong_left = lambda x: (x[:, 0] < 0.5).astype(float)   # noqa: E731 — right on the target
    wrong_right = lambda x: (x[:, 0] > -0.5).astype(float)  # noqa: E731 — wrong on the target
    assert wrong_left(val).mean() == pytest.approx(wrong_right(val).mean(), abs=0.05)
    risks = {}
    for name, loss in (("left", wrong_left), ("right", wrong_right)):
        risks[name] = dev_risk(val, loss(val), target, train)
        assert risks[name] == pytest.approx(loss(target_test).mean(), abs=0.06)
    assert risks["left"] < 0.3 < 0.8 < risks["right"]


def test_dev_ranks_a_broken_model_below_a_good_one():
    """A good model: informative features and a low loss on most source images. A broken
    one: features that are noise and the loss of guessing among four classes."""
    rng = np.random.default_rng(0)
    good_val, good_target = _gaussian(rng, 300), _gaussian(rng, 300, shift=0.5)
    good_losses = rng.exponential(0.2, 300)
    broken_val, broken_target = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    broken_losses = np.log(4) + rng.normal(0, 0.1, 300)
    assert (dev_risk(broken_val, broken_losses, broken_target)
            > dev_risk(good_val, good_losses, good_target) + 0.5)


def test_dev_refuses_bad_input_in_one_line():
    rng = np.random.default_rng(0)
    val, target = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    with pytest.raises(DataError, match="one value per validation row"):
        dev_risk(val, np.zeros(9), target)
    with pytest.raises(DataError, match="widths differ"):
        dev_risk(val, np.zeros(10), rng.normal(size=(10, 4)))
    with pytest.raises(DataError, match="NaN"):
        dev_risk(val, np.full(10, np.nan), target)
    with pytest.raises(DataError, match="at least 4"):
        dev_risk(val[:3], np.zeros(3), target)
    with pytest.raises(DataError, match=r"\(n >= 2, features\)"):
        dev_risk(np.zeros(10), np.zeros(10), target)
