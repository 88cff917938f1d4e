"""Knowledge distillation: the loss by hand, temperature softening, the estimator, the job."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.errors import DataError
from transferkit.methods.distill import DistilledStudent, distillation_loss, soften
from transferkit.nets.students import StudentCNN

torch.set_num_threads(1)

STUDENT = [[1.0, 2.0, 0.5]]
TEACHER = [[3.0, 1.0, 0.0]]


def _hand_kd(student, teacher, T):
    """T² · Σ p log(p / q) with p = softmax(t/T), q = softmax(s/T), written out."""
    ep = [math.exp(t / T) for t in teacher]
    eq = [math.exp(s / T) for s in student]
    p = [e / sum(ep) for e in ep]
    q = [e / sum(eq) for e in eq]
    return T * T * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _hand_ce(student, label):
    return -student[label] + math.log(sum(math.exp(s) for s in student))


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_loss_equals_hand_computation(T):
    s, t, label, alpha = STUDENT[0], TEACHER[0], 2, 0.7
    expected = alpha * _hand_kd(s, t, T) + (1 - alpha) * _hand_ce(s, label)
    got = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([label]),
                            temperature=T, alpha=alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_hand_numbers_include_the_T_squared_factor():
    # Worked by hand for s = (1, 2, 0.5), t = (3, 1, 0), label 2:
    # T = 4: p = softmax(t/4) = (0.4810, 0.2918, 0.2272), q = softmax(s/4) = (0.3158, 0.4055,
    #        0.2787), KL(p‖q) = 0.059967, × T² = 16 → 0.959472.
    # T = 1: p = (0.8438, 0.1142, 0.0420), q = (0.2312, 0.6285, 0.1402), KL = 0.846912.
    # CE(s, 2) = log(e + e² + e^0.5) − 0.5 = 1.964369.
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    assert float(distillation_loss(s, t, None, 4.0, 1.0)) == pytest.approx(16 * 0.0599670, rel=1e-5)
    assert float(distillation_loss(s, t, None, 1.0, 1.0)) == pytest.approx(0.846912, rel=1e-5)
    mixed = distillation_loss(s, t, torch.tensor([2]), 4.0, 0.9)
    assert float(mixed) == pytest.approx(0.9 * 0.959472 + 0.1 * 1.964369, rel=1e-5)


def test_identical_logits_give_zero_kd_and_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 1])
    assert float(distillation_loss(logits, logits.clone(), None, 3.0, 1.0)) == pytest.approx(0.0, abs=1e-7)
    teacher = torch.randn(5, 4)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert float(distillation_loss(logits, teacher, labels, 4.0, 0.0)) == pytest.approx(float(ce), rel=1e-6)


def test_unlabelled_rows_use_only_the_kd_term():
    torch.manual_seed(1)
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, -1, 2, -1])
    T, alpha = 2.0, 0.6
    got = distillation_loss(student, teacher, labels, T, alpha)
    kd = np.mean([_hand_kd(student[i].tolist(), teacher[i].tolist(), T) for i in range(4)])
    ce = np.mean([_hand_ce(student[i].tolist(), int(labels[i])) for i in (0, 2)])
    assert float(got) == pytest.approx(alpha * kd + (1 - alpha) * ce, rel=1e-6)
    # No row labelled: the KD term alone.
    all_unlabelled = distillation_loss(student, teacher, torch.full((4,), -1), T, alpha)
    assert float(all_unlabelled) == pytest.approx(alpha * kd, rel=1e-6)


def test_kd_gradient_size_is_independent_of_T_thanks_to_T_squared():
    torch.manual_seed(2)
    teacher = torch.randn(64, 10) * 0.5
    norms = []
    for T in (2.0, 8.0):
        student = (torch.randn(64, 10, generator=torch.Generator().manual_seed(3)) * 0.5).requires_grad_()
        distillation_loss(student, teacher, None, T, 1.0).backward()
        norms.append(float(student.grad.norm()))
    # Without T² the T = 8 gradients would be ~16× smaller than the T = 2 ones.
    assert 0.5 < norms[1] / norms[0] < 2.0


def test_temperature_flattens_probabilities_and_keeps_their_order():
    logits = np.array([[4.0, 1.0, 2.5, -1.0], [0.2, 0.1, 3.0, 0.15]])
    entropies, orders = [], []
    for T in (0.5, 1.0, 2.0, 4.0, 16.0):
        p = soften(logits, T)
        assert np.allclose(p.sum(axis=1), 1.0)
        entropies.append(-(p * np.log(p)).sum(axis=1))
        orders.append(np.argsort(-p, axis=1))
        assert p.max(axis=1).min() > 0.25  # never flatter than uniform over 4
    entropies = np.array(entropies)
    assert (np.diff(entropies, axis=0) > 0).all()  # higher T, higher entropy, every row
    assert all((order == orders[0]).all() for order in orders)  # same ranking of classes
    assert np.allclose(soften(logits, 1e4), 0.25, atol=1e-3)  # T → ∞: uniform
    assert (soften(logits, 1e-3).argmax(1) == logits.argmax(1)).all()
    assert soften(logits, 1e-3).max() == pytest.approx(1.0)  # T → 0: one-hot


def test_loss_rejects_bad_arguments():
    s = torch.zeros(2, 3)
    with pytest.raises(DataError):
        distillation_loss(s, torch.zeros(2, 4))
    with pytest.raises(DataError):
        distillation_loss(s, s, None, temperature=0.0)
    with pytest.raises(DataError):
        distillation_loss(s, s, None, alpha=1.5)


# -- the estimator on synthetic images ---------------------------------------------------

def _toy_images(n_per_class=24, size=32, seed=0):
    """Three classes of noisy images told apart by the colour of a central square."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 30, 30], [30, 30, 220], [30, 200, 40]])
    images, labels = [], []
    for c, colour in enumerate(colours):
        for _ in range(n_per_class):
            img = rng.integers(90, 160, size=(size, size, 3))
            lo = size // 4 + rng.integers(-3, 4)
            img[lo:lo + size // 2, lo:lo + size // 2] = np.clip(colour + rng.integers(-25, 26, 3), 0, 255)
            images.append(img)
            labels.append(["red", "blue", "green"][c])
    return np.asarray(images, dtype=np.uint8), np.asarray(labels)


def test_tiny_end_to_end_fit_alone_and_distilled(tmp_path):
    from transferkit.bundle import load_bundle, save_bundle

    X, y = _toy_images(size=16)
    Xt, yt = _toy_images(10, size=16, seed=1)
    classes = np.array(["blue", "green", "red"])
    # A confident, correct "teacher": logits 3 for the true class, 0 elsewhere.
    teacher = 3.0 * (y[:, None] == classes[None, :]).astype(np.float32)
    options = dict(student="tiny-cnn", image_size=16, epochs=4, batch_size=16, device="cpu",
                   random_state=0)
    alone = DistilledStudent(**options).fit(X, y)
    assert not alone.distilled_ and alone.score(Xt, yt) > 0.6
    # Half the images unlabelled: they learn from the teacher alone.
    y_partial = y.astype(object)
    y_partial[::2] = None
    distilled = DistilledStudent(**options).fit(X, y_partial, teacher_logits=teacher,
                                                classes=classes)
    assert distilled.distilled_ and distilled.n_unlabelled_ == len(X) // 2
    assert list(distilled.classes_) == list(classes)
    assert distilled.predict_proba(Xt).shape == (len(Xt), 3)
    assert distilled.score(Xt, yt) > 0.6
    # Saved as a bundle (safetensors + JSON) and loaded back, it predicts the same.
    folder = save_bundle(distilled, tmp_path / "student")
    assert (folder / "student.safetensors").is_file()
    again = DistilledStudent.load(folder)
    assert np.allclose(again.predict_proba(Xt), distilled.predict_proba(Xt), atol=1e-6)
    assert type(load_bundle(folder)) is DistilledStudent


def test_paths_are_decoded_and_resized(image_folder):
    from transferkit.data.dataset import read_image_folder

    images = read_image_folder(image_folder)
    names = np.asarray(images.classes)[images.labels]
    model = DistilledStudent(student="tiny-cnn", image_size=16, epochs=1, batch_size=8,
                             device="cpu").fit(images.paths, names)
    proba, ok, skipped = model.predict_paths(images.paths)
    assert ok.all() and not skipped and proba.shape == (len(images), 2)


def test_teacher_and_data_class_mismatch_is_a_clear_error():
    X, y = _toy_images(4)
    two_columns = np.zeros((len(X), 2), dtype=np.float32)
    with pytest.raises(DataError, match="teacher gives 2 logits"):
        DistilledStudent(epochs=1, image_size=32).fit(X, y, teacher_logits=two_columns)
    with pytest.raises(DataError, match="not among the teacher's classes"):
        DistilledStudent(epochs=1, image_size=32).fit(
            X, y, teacher_logits=np.zeros((len(X), 2)), classes=["red", "blue"])
    with pytest.raises(DataError, match="32×32"):
        DistilledStudent(epochs=1, image_size=64).fit(X, y)
    with pytest.raises(DataError, match="nothing to learn"):
        DistilledStudent(epochs=1, image_size=32).fit(X)


def test_job_refuses_data_with_classes_the_teacher_does_not_know(tmp_path):
    from transferkit.jobs.distill import _check_classes

    with pytest.raises(DataError, match=r"classes \['green'\] are unknown to the teacher"):
        _check_classes(["blue", "red"], ["blue", "green", "red"], tmp_path)
    _check_classes(["blue", "green", "red"], ["blue", "red"], tmp_path)  # a subset is fine


def test_students_are_much_smaller_than_a_lite_backbone():
    small = sum(p.numel() for p in StudentCNN("small-cnn", 17).parameters())
    tiny = sum(p.numel() for p in StudentCNN("tiny-cnn", 17).parameters())
    assert tiny < small < 500_000  # EfficientNet-Lite0 has ~3.4 M
    with pytest.raises(DataError, match="unknown student"):
        StudentCNN("resnet9000", 3)


def test_cli_distill_end_to_end(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    import json

    from builders import write_class_folder

    from transferkit import run
    from transferkit.jobs import distill as distill_job
    from transferkit.cli import main

    monkeypatch.setattr(distill_job, "SPEED_SECONDS", 0.05)
    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "data", per_class=6, classes=("red", "blue", "green"))
    run.fit(data, tmp_path / "teacher", weights=str(path), arch=arch, report=False,
            runtime="eager", cv=2)
    extra = write_class_folder(tmp_path / "extra", per_class=3, classes=("red", "blue"), seed=5)
    out = tmp_path / "out"
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--data", str(data),
                 "--student", "tiny-cnn", "--out", str(out), "--epochs", "1",
                 "--image-size", "16", "--unlabelled", str(extra), "--device", "cpu",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_unlabelled"] == 6 and result["n_train"] + result["n_val"] == 18
    for key in ("teacher_accuracy", "student_alone_accuracy", "student_distilled_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["speed"]["student_images_per_s"] > 0 and result["speed"]["speedup"] > 0
    assert (out / "summary.json").is_file() and (out / "student" / "student.safetensors").is_file()
    assert "note" not in result  # teacher and job made the same split (seed 0, 20 %)
    student = DistilledStudent.load(out / "student")
    assert student.image_size == 16 and list(student.classes_) == ["blue", "green", "red"]

    # The plain-text report.
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--data", str(data),
                 "--student", "tiny-cnn", "--epochs", "1", "--image-size", "16", "--seed", "3",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "student distilled" in text and "faster than the teacher" in text
    assert "optimistic" in text  # seed 3 splits differently from the teacher's seed 0

    # Data whose classes the teacher does not know: one line, exit status 2.
    other = write_class_folder(tmp_path / "other", per_class=4, classes=("red", "green"))
    (other / "purple").mkdir()
    for file in list((other / "red").iterdir())[:2]:
        file.rename(other / "purple" / file.name)
    assert main(["distill", "--teacher", str(tmp_path / "teacher"), "--data", str(other),
                 "--epochs", "1"]) == 2
    assert "unknown to the teacher" in capsys.readouterr().err
