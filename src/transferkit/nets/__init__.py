"""The small torch networks transferkit trains itself, in one place.

:mod:`.digits`: Ganin & Lempitsky's digit encoder, classifier and the mirrored decoder
(domain adaptation, DRCN, the autoencoder); :mod:`.students`: the distillation students;
:mod:`.multitask`: the shared block with one head per task; :mod:`.pair_embedding`: the
Siamese embedding head. Each module imports torch at the top, so only code that trains or
loads a network imports them (the methods do so inside ``fit`` and ``_load_artifacts``):
importing a method or parsing the command line stays free of torch. Layer attribute names
are the keys of saved weights, so they never change.
"""
