"""Subspace alignment (methods/domain/subspace.py): the source PCA basis mapped onto the
target's."""

from __future__ import annotations

import numpy as np

from domain_problems import mean_accuracy, rotation_shift
from transferkit.methods.domain._base import SourceOnly
from transferkit.methods.domain.subspace import SubspaceAlignment, SubspaceAlignmentTransformer


def test_subspace_alignment_beats_source_only_on_a_rotation_shift():
    source_only = mean_accuracy(SourceOnly, rotation_shift)
    adapted = mean_accuracy(lambda: SubspaceAlignment(n_components=2), rotation_shift)
    assert adapted > source_only + 0.05, (adapted, source_only)


def test_subspace_alignment_maps_the_source_basis_onto_the_target_basis():
    Xs, ys, Xt, *_ = rotation_shift(0)
    sa = SubspaceAlignmentTransformer(n_components=2).fit(Xs, Xt=Xt)
    aligned_basis = sa.source_components_.T @ sa.alignment_
    target_basis = sa.target_components_.T
    assert np.linalg.norm(aligned_basis - target_basis) < np.linalg.norm(
        sa.source_components_.T - target_basis)
    assert sa.transform(Xs).shape == sa.transform_target(Xt).shape == (len(Xs), 2)
