"""Domain adaptation: a classifier trained on a labelled source domain for a target domain.

Shallow methods adapt frozen feature matrices (CORAL, subspace alignment, TCA, KMM,
importance re-weighting) on the base class and baselines of :mod:`._base`; deep methods
train Ganin & Lempitsky's small digit network with an alignment loss (DANN, DAN, Deep
CORAL, ADDA, domain confusion, DRCN) on the machinery of :mod:`._deep_base`. One file per
method, named after it; they are created by name through :mod:`transferkit.methods`, so
nothing is imported here.
"""
