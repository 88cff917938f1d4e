"""Few-shot classification: new classes from a handful of labelled images each.

Class prototypes on frozen features (:mod:`.prototypes`) and a learned Siamese similarity
(:mod:`.siamese`). They are created by name through :mod:`transferkit.methods`, so
nothing is imported here.
"""
