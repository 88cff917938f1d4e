"""Transfer methods, one per file, each a scikit-learn-style estimator — and their catalogue.

Families with several members are folders: ``domain/`` (domain adaptation, shallow and
deep) and ``fewshot/``; the small networks they train live in :mod:`transferkit.nets`.

Every method is registered here by name, family and place (see
:mod:`transferkit.methods.registry`); nothing is imported until a method is created, so
listing methods or parsing the command line imports no torch. ``LinearProbe`` and
``FineTuner`` stay importable from this package (loaded on first use).
"""

from transferkit.methods.registry import (
    create_method,
    list_methods,
    method_class,
    register_method,
)

_M = "transferkit.methods"
_DOMAIN = f"{_M}.domain"
_FEWSHOT = f"{_M}.fewshot"

# -- fit: a classifier for the user's images ----------------------------------------------
register_method("linear_probe", f"{_M}.linear_probe:LinearProbe", family="classifier",
                saves_bundle=True, refits_cheaply=True,
                summary="frozen features + shallow classifier")
register_method("fne", f"{_M}.linear_probe:full_network_embedding", family="classifier",
                saves_bundle=True, refits_cheaply=True,
                summary="Full-Network Embedding + linear SVM")
register_method("finetune", f"{_M}.finetune:FineTuner", family="classifier",
                saves_bundle=True, summary="train the network")

# -- adapt: deep methods on Ganin & Lempitsky's small network ------------------------------
register_method("deep-source-only", f"{_DOMAIN}._deep_base:DeepSourceOnly",
                family="domain-deep", baseline=True)
register_method("dann", f"{_DOMAIN}.dann:DANN", family="domain-deep")
register_method("cdan", f"{_DOMAIN}.cdan:CDAN", family="domain-deep")
register_method("mcc", f"{_DOMAIN}.mcc:MCC", family="domain-deep")
register_method("shot", f"{_DOMAIN}.shot:SHOT", family="domain-deep")
register_method("dan", f"{_DOMAIN}.dan:DAN", family="domain-deep")
register_method("deep-coral", f"{_DOMAIN}.deep_coral:DeepCORAL", family="domain-deep")
register_method("adda", f"{_DOMAIN}.adda:ADDA", family="domain-deep")
register_method("domain-confusion", f"{_DOMAIN}.domain_confusion:DomainConfusionSoftLabels",
                family="domain-deep", semi_supervised=True)
register_method("drcn", f"{_DOMAIN}.drcn:ReconstructionDA", family="domain-deep")

# -- adapt: shallow methods on frozen features ---------------------------------------------
register_method("source-only", f"{_DOMAIN}._base:SourceOnly", family="domain-shallow",
                baseline=True)
register_method("target-oracle", f"{_DOMAIN}._base:TargetOracle", family="domain-shallow",
                baseline=True)
register_method("coral", f"{_DOMAIN}.coral:CORAL", family="domain-shallow")
register_method("subspace", f"{_DOMAIN}.subspace:SubspaceAlignment", family="domain-shallow")
register_method("tca", f"{_DOMAIN}.tca:TCA", family="domain-shallow")
register_method("kmm", f"{_DOMAIN}.kmm:KMM", family="domain-shallow")
register_method("reweight", f"{_DOMAIN}.reweight:ImportanceReweighting",
                family="domain-shallow")

# -- other kinds of transfer ---------------------------------------------------------------
register_method("prototypes", f"{_FEWSHOT}.prototypes:PrototypeClassifier", family="fewshot")
register_method("siamese", f"{_FEWSHOT}.siamese:SiameseSimilarity", family="fewshot",
                saves_bundle=True)
register_method("distill", f"{_M}.distill:DistilledStudent", family="distill",
                saves_bundle=True)
register_method("zeroshot", f"{_M}.zeroshot:ZeroShotClassifier", family="zeroshot")
register_method("multitask", f"{_M}.multitask:MultiTaskClassifier", family="multitask")
register_method("autoencoder", f"{_M}.autoencoder:ConvAutoencoder", family="autoencoder")
register_method("autoencoder-init", f"{_M}.autoencoder:AutoencoderInitialisedClassifier",
                family="autoencoder")
register_method("anomaly", f"{_M}.anomaly:AnomalyDetector", family="anomaly")
register_method("segment", f"{_M}.segmentation:SegmentationTransfer", family="segmentation",
                saves_bundle=True, summary="pretrained encoder + U-Net decoder, per-pixel labels")

_LAZY = {"LinearProbe": "linear_probe", "FineTuner": "finetune"}


def __getattr__(name: str):
    # PEP 562: `from transferkit.methods import LinearProbe` imports only what it names.
    if name in _LAZY:
        return method_class(_LAZY[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FineTuner", "LinearProbe", "create_method", "list_methods", "method_class",
           "register_method"]
