"""SHOT (methods/domain/shot.py): the clustered pseudo-labels against the official code's
computation written out, the information-maximisation loss at its extremes, the frozen
source hypothesis, and fits on digit arrays and on a pretrained backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domain_problems import bars, photo_pair
from transferkit.errors import TransferkitError
from transferkit.methods.domain._deep_base import DeepSourceOnly, images_to_tensor
from transferkit.methods.domain.shot import (SHOT, cluster_pseudo_labels,
                                             information_maximisation_loss)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def obtain_label_by_hand(features, probabilities):
    """The official SHOT code's ``obtain_label`` (distance 'cosine', threshold 0), loop by loop."""
    n, c = probabilities.shape
    f = np.hstack([features, np.ones((n, 1))])
    f = f / np.sqrt((f ** 2).sum(1, keepdims=True))
    predicted = probabilities.argmax(1)
    labelset = [k for k in range(c) if (predicted == k).sum() > 0]

    def nearest(centroids):
        labels = []
        for row in f:
            distances = [1 - row @ centroids[k] / (np.linalg.norm(row) * np.linalg.norm(centroids[k]))
                         for k in labelset]
            labels.append(labelset[int(np.argmin(distances))])
        return np.array(labels)

    centroids = [sum(probabilities[i, k] * f[i] for i in range(n)) / (1e-8 + probabilities[:, k].sum())
                 for k in range(c)]
    labels = nearest(centroids)
    onehot = np.eye(c)[labels]
    centroids = [sum(onehot[i, k] * f[i] for i in range(n)) / (1e-8 + onehot[:, k].sum())
                 for k in range(c)]
    return nearest(centroids)


def test_pseudo_labels_match_the_official_computation():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6)) + np.repeat(np.eye(4, 6) * 3, 10, axis=0)
    logits = rng.normal(size=(40, 4)) * 2
    logits[:, 3] -= 10  # class 3 is predicted for no image: it gets no centroid
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = cluster_pseudo_labels(features, probabilities)
    np.testing.assert_array_equal(labels, obtain_label_by_hand(features, probabilities))
    assert 3 not in labels


def test_pseudo_labels_correct_a_classifier_that_disagrees_with_the_clusters():
    rng = np.random.default_rng(1)
    features = np.vstack([rng.normal([5, 0], 0.3, (20, 2)), rng.normal([0, 5], 0.3, (20, 2))])
    truth = np.repeat([0, 1], 20)
    probabilities = np.where(truth[:, None] == np.arange(2), 0.8, 0.2)
    probabilities[:6] = [0.3, 0.7]  # six images of cluster 0 misclassified, unconfidently
    assert (probabilities.argmax(1) == truth).mean() == 34 / 40
    np.testing.assert_array_equal(cluster_pseudo_labels(features, probabilities), truth)


def test_information_maximisation_is_lowest_for_confident_diverse_predictions():
    big = 50.0
    diverse = torch.eye(4) * big        # each image sure of its own class
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = big               # every image sure of class 0
    uniform = torch.zeros(4, 4)         # no image sure of anything
    assert float(information_maximisation_loss(diverse)) == pytest.approx(-np.log(4), abs=1e-3)
    assert float(information_maximisation_loss(collapsed)) == pytest.approx(0.0, abs=1e-3)
    assert float(information_maximisation_loss(uniform)) == pytest.approx(0.0, abs=1e-3)


def test_shot_keeps_the_source_hypothesis_and_adapts_the_features():
    X, y = bars(200, 0)
    Xt, _ = bars(200, 1, colour_shift=True)
    test, _ = bars(300, 2, colour_shift=True)
    model = SHOT(epochs=4, batch_size=32, random_state=0).fit(X, y, Xt)
    plain = DeepSourceOnly(epochs=4, batch_size=32, random_state=0).fit(X, y, Xt)
    assert model.get_params()["adaptation_weight"] == 0.3  # the paper's β
    # Stage 1 is the source-only network, and stage 2 leaves its classifier as it was:
    # weights and, on this network, its BatchNorm statistics (neither the target stage nor
    # AdaBN may touch a frozen layer).
    mine, theirs = model.model_.classifier.state_dict(), plain.model_.classifier.state_dict()
    assert any("running_mean" in name for name in mine)
    assert mine.keys() == theirs.keys()
    for name in mine:
        assert torch.equal(mine[name], theirs[name]), name
    assert not any(p.requires_grad for p in model.model_.classifier.parameters())
    assert not all(torch.equal(a, b) for a, b in zip(model.model_.features.parameters(),
                                                      plain.model_.features.parameters()))
    assert [row["stage"] for row in model.history_] == ["source"] * 4 + ["target"] * 4
    # No accuracy claim here: on these bars the target's feature clusters follow the
    # background colours, not the bars, and SHOT follows its clusters (0.55 vs 0.71 for
    # source only); the Office-31 benchmark measures what it gains on photos.
    with torch.no_grad():
        images = images_to_tensor(test)
        adapted = float(information_maximisation_loss(model.model_(images)))
        before = float(information_maximisation_loss(plain.model_(images)))
    assert adapted < before  # the method lowers what it minimises, on held-out target images


@pytest.mark.slow  # real bundled weights: ~15 s, most of it loading the backbone
def test_shot_adapts_a_pretrained_backbone_on_image_files(tmp_path):
    source, y, target, _ = photo_pair(tmp_path)
    model = SHOT(backbone="efficientnet_lite0", trainable=0, views=0, epochs=1,
                 cache_dir=tmp_path / "activations", random_state=0).fit(source, y, target)
    assert model.n_features_ == 256
    assert model.predict(target).shape == (12,)
    assert model.predict_proba(target).shape == (12, 2)


def test_a_given_source_only_network_is_stage_one_bit_for_bit():
    # adapt trains the source-only baseline anyway; SHOT starting from it must end where
    # SHOT training its own stage 1 ends, and leave the baseline as it was.
    X, y = bars(120, 0)
    Xt, _ = bars(120, 1, colour_shift=True)
    settings = dict(epochs=2, batch_size=32, random_state=0)
    plain = DeepSourceOnly(**settings).fit(X, y, Xt)
    baseline = {k: v.clone() for k, v in plain.model_.state_dict().items()}
    alone = SHOT(**settings).fit(X, y, Xt)
    reused = SHOT(**settings).fit(X, y, Xt, source_only=plain)
    for name, value in alone.model_.state_dict().items():
        assert torch.equal(value, reused.model_.state_dict()[name]), name
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in model.history_]
               for model in (reused, alone)]
    assert untimed[0] == untimed[1]
    for name, value in plain.model_.state_dict().items():
        assert torch.equal(value, baseline[name]), name
    with pytest.raises(TransferkitError, match="these differ: epochs"):
        SHOT(epochs=3, batch_size=32, random_state=0).fit(X, y, Xt, source_only=plain)
    # Other labels, other target images, other classes: not the network stage 1 would train.
    with pytest.raises(TransferkitError, match="same images, labels and classes"):
        SHOT(**settings).fit(X, 1 - y, Xt, source_only=plain)
    with pytest.raises(TransferkitError, match="same images, labels and classes"):
        SHOT(**settings).fit(X, y, Xt[:100], source_only=plain)
    with pytest.raises(TransferkitError, match="same images, labels and classes"):
        SHOT(**settings).fit(X, np.where(y == 1, 5, y), Xt, source_only=plain)
    with pytest.raises(TransferkitError, match="fitted DeepSourceOnly"):
        SHOT(**settings).fit(X, y, Xt, source_only={})
