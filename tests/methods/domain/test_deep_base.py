"""The deep domain-adaptation machinery (methods/domain/_deep_base.py): image checks, the
source-only network, target BatchNorm statistics, and each deep method against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from domain_problems import bars, colour_shift_problem
from transferkit.errors import DataError
from transferkit.methods.domain._deep_base import (
    CHUNK_VALUES,
    DeepSourceOnly,
    PairedDomains,
    chunks,
    images_to_tensor,
    target_batchnorm_statistics,
)
from transferkit.methods.domain.adda import ADDA
from transferkit.methods.domain.dan import DAN
from transferkit.methods.domain.dann import DANN
from transferkit.methods.domain.deep_coral import DeepCORAL
from transferkit.methods.domain.domain_confusion import DomainConfusionSoftLabels
from transferkit.methods.domain.drcn import ReconstructionDA

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_images_are_checked_and_scaled():
    grey = np.full((2, 32, 32), 255, dtype=np.uint8)
    tensor = images_to_tensor(grey)
    assert tensor.shape == (2, 3, 32, 32) and float(tensor.max()) == 1.0
    with pytest.raises(DataError, match="32×32"):
        images_to_tensor(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="no images"):
        images_to_tensor(np.zeros((0, 32, 32), np.uint8))


def test_source_only_learns_and_the_domain_classifier_is_trained(tmp_path):
    X, y = bars(200, 0)
    Xt, _ = bars(200, 1, colour_shift=True)
    plain = DeepSourceOnly(epochs=3, batch_size=32).fit(X, y)
    test, truth = bars(100, 2)
    assert plain.score(test, truth) > 0.9
    assert plain.transform(test).shape == (100, plain.n_features_)
    adapted = DANN(epochs=2, batch_size=32, run_dir=str(tmp_path / "run")).fit(X, y, Xt)
    assert (tmp_path / "run" / "metrics.csv").is_file()
    fresh = DANN(epochs=1, batch_size=32)
    # The domain classifier's weights moved: the adversarial branch took part in training.
    torch.manual_seed(0)
    untrained = fresh._extra_modules(adapted.n_features_)["domain"]
    assert not torch.equal(untrained[0].weight, adapted.model_.extra["domain"][0].weight)
    # 180 training images (10% held out), batches of 32 with the last partial one
    # dropped: 5 steps an epoch; the progress counter behind λ_p counted them all.
    assert int(adapted.model_.steps_done) == 2 * (180 // 32)


def test_a_run_folder_refuses_a_resume_on_another_target(tmp_path):
    """Checkpoints are matched on the data: the same source with a different target folder
    is another run, not a resume (it used to reuse the first target's epochs silently)."""
    from transferkit.train.loop import RunMismatchError

    X, y = bars(80, 0)
    Xt, _ = bars(80, 1, colour_shift=True)
    other, _ = bars(80, 3, colour_shift=True)
    run = str(tmp_path / "run")
    first = DANN(epochs=1, batch_size=32, run_dir=run).fit(X, y, Xt)
    again = DANN(epochs=1, batch_size=32, run_dir=run).fit(X, y, Xt)  # the same run: reused
    for a, b in zip(first.model_.parameters(), again.model_.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(RunMismatchError, match="different training run"):
        DANN(epochs=1, batch_size=32, run_dir=run).fit(X, y, other)


@pytest.fixture(scope="module")
def colour_shift():
    return colour_shift_problem()


@pytest.mark.parametrize("method", [DANN, DAN, DeepCORAL, ADDA, DomainConfusionSoftLabels,
                                    ReconstructionDA], ids=lambda cls: cls.__name__)
def test_each_deep_method_beats_source_only_on_a_colour_shift(colour_shift, method):
    X, y, Xt, yt, test, truth, baseline = colour_shift
    target_labels = None
    if method is DomainConfusionSoftLabels:  # semi-supervised: ten labelled target images
        target_labels = np.full(len(yt), -1)
        target_labels[:10] = yt[:10]
    accuracy = np.mean([method(epochs=6, batch_size=32, random_state=seed)
                        .fit(X, y, Xt, target_labels).score(test, truth) for seed in (0, 1)])
    assert accuracy > baseline + 0.02, (accuracy, baseline)


def test_target_batchnorm_statistics_are_the_target_moments():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2),
                          nn.BatchNorm1d(2))
    target = torch.randn(40, 3, 1, 1) * 3 + 5
    target_batchnorm_statistics(model, target, batch_size=40)
    with torch.no_grad():
        conv = model[0](target)
    assert torch.allclose(model[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, conv.var((0, 2, 3)), atol=1e-4)
    assert model[1].momentum == 0.1 and not model.training
    # In equal batches the running mean is the average of the batch means: the target mean.
    target_batchnorm_statistics(model, target, batch_size=8)
    assert torch.allclose(model[1].running_mean, conv.mean((0, 2, 3)), atol=1e-5)


def test_inference_chunks_bound_the_values_not_the_rows():
    features = torch.zeros(1300, 1280)  # pooled vectors: 512 rows at a time, as before
    assert [len(c) for c in chunks(features)] == [512, 512, 276]
    images = torch.zeros(300, 3, 224, 224)  # whole images: ~111 per chunk, 64 MB each
    sizes = [len(c) for c in chunks(images)]
    assert sum(sizes) == 300 and max(sizes) == CHUNK_VALUES // (3 * 224 * 224)
    assert torch.equal(torch.cat(chunks(torch.arange(10.0).view(10, 1), at_most=3)),
                       torch.arange(10.0).view(10, 1))


def test_paired_domains_select_rows_by_index_as_a_copy_would():
    """Rows chosen by index (no copy of gigabytes of cached views) give the very items, in
    the very order and with the very random draws, of the copied subset they replace."""
    source = torch.arange(20.0).view(10, 2)
    labels = torch.arange(10)
    target = torch.arange(100.0, 114.0).view(7, 2)
    rows = np.array([7, 2, 5, 0, 9])
    by_index = PairedDomains(source, labels, target, length=8, rows=rows)
    copied = PairedDomains(source[rows], labels[rows], target, length=8)
    torch.manual_seed(0)
    first = [by_index[i] for i in range(len(by_index))]
    torch.manual_seed(0)
    second = [copied[i] for i in range(len(copied))]
    for (xs, ys, xt), (cs, cy, ct) in zip(first, second):
        assert torch.equal(xs, cs) and ys == cy and torch.equal(xt, ct)
    # A partner drawn from selected rows of the source itself (source only, no target).
    own = PairedDomains(source, labels, source, rows=rows, target_rows=rows)
    partners = {tuple(own[i][2].tolist()) for i in range(50)}
    assert partners <= {tuple(source[r].tolist()) for r in rows}


def test_bad_input_is_refused_with_a_clear_error():
    X, y = bars(20, 0)
    with pytest.raises(DataError, match="two classes"):
        DAN(epochs=1).fit(X, np.zeros(20))
    with pytest.raises(DataError, match="labels"):
        DAN(epochs=1).fit(X, y[:5])
