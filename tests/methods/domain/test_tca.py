"""Transfer component analysis (methods/domain/tca.py): a kernel embedding that shrinks
the distance between the domains."""

from __future__ import annotations

import numpy as np

from domain_problems import mean_accuracy, translation_shift
from transferkit.methods.domain._base import SourceOnly
from transferkit.methods.domain.tca import TCA, TCATransformer


def test_tca_beats_source_only_on_a_translation_shift():
    source_only = mean_accuracy(SourceOnly, translation_shift)
    adapted = mean_accuracy(lambda: TCA(n_components=1, kernel="linear", mu=1.0),
                            translation_shift)
    assert adapted > source_only + 0.05, (adapted, source_only)


def test_tca_embeds_new_target_rows_like_the_training_ones():
    Xs, ys, Xt, yt, Xtest, _ = translation_shift(0, n=60)
    tca = TCATransformer(n_components=3, kernel="rbf", mu=0.5).fit(Xs, Xt=Xt)
    K = tca._kernel(tca.support_, tca.support_)
    np.testing.assert_allclose(tca.transform(Xt), (K @ tca.components_)[len(Xs):], atol=1e-8)
    assert tca.transform(Xtest).shape == (len(Xtest), 3)
    # the transfer components shrink the distance between the domain means
    gap_raw = np.linalg.norm(Xs.mean(0) - Xt.mean(0)) / np.linalg.norm(np.r_[Xs, Xt].std(0))
    lin = TCATransformer(n_components=1).fit(Xs, Xt=Xt)
    Zs, Zt = lin.transform(Xs), lin.transform(Xt)
    gap_tca = np.linalg.norm(Zs.mean(0) - Zt.mean(0)) / np.linalg.norm(np.r_[Zs, Zt].std(0))
    assert gap_tca < 0.2 * gap_raw
