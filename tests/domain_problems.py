"""Toy domain-shift problems shared by the tests in tests/methods/domain (imported as
``domain_problems``: the tests folder is on pytest's ``pythonpath``, the test folders are
not packages).

Shallow problems are shifts that one method's rule is built to undo; each returns
``Xs, ys, Xt, yt, Xtest, ytest`` and ``mean_accuracy`` scores a method over three seeds on
the held-out labelled target sample. The deep problem is bars on 32×32 images whose
target domain has coloured backgrounds.
"""

from __future__ import annotations

import contextlib

import numpy as np

# Shallow (feature-level) problems

SEEDS = (0, 1, 2)


def covariate_shift(seed, n=200):
    """y = 1 iff |x1| > 1: source x1 ~ N(0, 1.5²), target x1 ~ N(1.2, 0.3²).

    P(y|x) is shared and not linear: a linear model fitted to the whole source is wrong
    near the target, one fitted to the re-weighted source learns the boundary x1 = 1.
    """
    rng = np.random.default_rng(seed)

    def draw(mean, sd):
        x = np.c_[rng.normal(mean, sd, n), rng.normal(0, 1, n)]
        return x, (np.abs(x[:, 0]) > 1).astype(int)

    Xs, ys = draw(0.0, 1.5)
    Xt, yt = draw(1.2, 0.3)
    Xtest, ytest = draw(1.2, 0.3)
    return Xs, ys, Xt, yt, Xtest, ytest


def _blobs(rng, n, means, sd):
    y = rng.integers(0, len(means), n)
    return np.asarray(means, float)[y] + rng.normal(0, 1, (n, len(means[0]))) * sd, y


def scaling_shift(seed, n=200):
    """Three blobs on the axes; the target rescales the axes by (3, 0.4, 1.5)."""
    rng = np.random.default_rng(seed)
    means = [[3, 0, 0], [0, 3, 0], [0, 0, 3]]
    scale = np.array([3.0, 0.4, 1.5])
    Xs, ys = _blobs(rng, n, means, 1.0)
    Xt, yt = _blobs(rng, n, means, 1.0)
    Xtest, ytest = _blobs(rng, n, means, 1.0)
    return Xs, ys, Xt * scale, yt, Xtest * scale, ytest


def rotation_shift(seed, n=200, angle=60.0):
    """Classes along the principal axis; the target is rotated by 60° and translated."""
    rng = np.random.default_rng(seed)
    means, sd = [[-2, 0, 0], [2, 0, 0]], np.array([1.0, 0.5, 0.2])
    a = np.deg2rad(angle)
    R = np.array([[np.cos(a), np.sin(a), 0], [-np.sin(a), np.cos(a), 0], [0, 0, 1]])
    shift = np.array([2.0, -1.0, 1.0])
    Xs, ys = _blobs(rng, n, means, sd)
    Xt, yt = _blobs(rng, n, means, sd)
    Xtest, ytest = _blobs(rng, n, means, sd)
    return Xs, ys, Xt @ R + shift, yt, Xtest @ R + shift, ytest


def translation_shift(seed, n=80):
    """Classes along x1; the target is translated by (3, 3): x1 − x2 still separates."""
    rng = np.random.default_rng(seed)
    means, shift = [[-2, 0], [2, 0]], np.array([3.0, 3.0])
    Xs, ys = _blobs(rng, n, means, 0.7)
    Xt, yt = _blobs(rng, n, means, 0.7)
    Xtest, ytest = _blobs(rng, n, means, 0.7)
    return Xs, ys, Xt + shift, yt, Xtest + shift, ytest


def mean_accuracy(make, problem) -> float:
    scores = []
    for seed in SEEDS:
        Xs, ys, Xt, _, Xtest, ytest = problem(seed)
        scores.append(make().fit(Xs, ys, Xt).score(Xtest, ytest))
    return float(np.mean(scores))


# Deep (image-level) problems


def bars(n, seed, colour_shift=False):
    """Horizontal (0) vs vertical (1) bars; the shifted domain has coloured backgrounds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = np.zeros((n, 32, 32, 3), np.float32)
    for i, label in enumerate(labels):
        background = rng.uniform(0, 1, 3) if colour_shift else np.zeros(3)
        foreground = np.clip(1 - background, 0, 1) if colour_shift else np.ones(3)
        picture = np.tile(background, (32, 32, 1))
        position, width = rng.integers(4, 24), rng.integers(3, 7)
        if label == 0:
            picture[position:position + width, 4:28] = foreground
        else:
            picture[4:28, position:position + width] = foreground
        images[i] = np.clip(picture + rng.normal(0, 0.05, picture.shape), 0, 1)
    return images, labels


@contextlib.contextmanager
def torch_threads(n):
    # Imported here so that the shallow tests, which share this module, do not load torch.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def colour_shift_problem():
    """Bars on black (source) → bars on random colour backgrounds (target), and the
    source-only network's target accuracy over two seeds (the baseline to beat)."""
    from transferkit.methods.domain._deep_base import DeepSourceOnly

    X, y = bars(200, 0)
    Xt, yt = bars(200, 1, colour_shift=True)
    test, truth = bars(300, 2, colour_shift=True)
    # A module-scoped fixture runs before the function-scoped ``one_torch_thread``.
    with torch_threads(1):
        baseline = np.mean([DeepSourceOnly(epochs=6, batch_size=32, random_state=seed)
                            .fit(X, y).score(test, truth) for seed in (0, 1)])
    return X, y, Xt, yt, test, truth, baseline


def photo_pair(root, per_class: int = 6):
    """Red vs blue squares as JPEG files, a source domain (48 px) and a target (40 px),
    for fitting the deep methods on a pretrained backbone: ``(source, y, target, yt)``
    with paths as strings."""
    from builders import CLASS_COLOURS, colour_image

    def domain(name, size, seed):
        paths, labels = [], []
        for label, colour in enumerate(("red", "blue")):
            for i in range(per_class):
                path = root / name / f"{colour}{i}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                colour_image(CLASS_COLOURS[colour], size=size, seed=seed + 10 * label + i) \
                    .save(path, quality=90)
                paths.append(str(path))
                labels.append(label)
        return paths, np.array(labels)

    return (*domain("source", 48, 0), *domain("target", 40, 500))
