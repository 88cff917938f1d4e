"""``transferkit cdfg``: cross-domain feature-space generalisation (dos Santos, Ribeiro &
Ponti 2019) of feature spaces between two labelled domains."""

from __future__ import annotations

import os
import time

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import class_names, format_table, pooled_images

NAME = "cdfg"
HELP = ("cross-domain feature-space generalisation (CDFG) of feature spaces between two "
        "labelled domains")


def add_arguments(parser) -> None:
    parser.add_argument("--domain-a", required=True, help="labelled images of domain A (class "
                        "folders; train and val parts are pooled)")
    parser.add_argument("--domain-b", required=True, help="labelled images of domain B, same "
                        "classes")
    _options.add_backbone(parser)
    parser.add_argument("--spaces", help="comma-separated feature spaces: last (pre-logits), fne "
                        "(Full-Network Embedding), stages (all stages, standardised), pca64 "
                        "(pre-logits, 64 PCA components); default last,fne")
    parser.add_argument("--classifier", choices=_options.PROBE_CLASSIFIERS, help="default logreg")
    _options.add_seed(parser)
    _options.add_cache(parser)


def run(domain_a: str | os.PathLike, domain_b: str | os.PathLike, spaces=("last", "fne"),
        backbone: str | None = None, weights: str | None = None, arch: str | None = None,
        classifier: str = "logreg", random_state: int = 0, cache_dir=None,
        use_cache: bool = True, progress: bool = False) -> dict:
    """CDFG of each feature space between two domains.

    ``domain_a``/``domain_b``: labelled image folders (or CSVs) with the same class
    names; their train and val parts are pooled. ``spaces``: names from
    :data:`~transferkit.evaluate.cdfg.FEATURE_SPACES` (a list or a comma-separated
    string). One row per space with G_comp (lower: the space carries over better), both
    G_part and the four held-out risks. Returns the summary of ``transferkit cdfg --json``.
    """
    from transferkit.evaluate.cdfg import compare_feature_spaces

    start = time.perf_counter()
    if isinstance(spaces, str):
        spaces = [space.strip() for space in spaces.split(",") if space.strip()]
    a, b = pooled_images(domain_a), pooled_images(domain_b)
    if set(a.classes) != set(b.classes):
        only_a = sorted(set(a.classes) - set(b.classes))
        only_b = sorted(set(b.classes) - set(a.classes))
        raise DataError(f"the two domains must have the same classes (CDFG compares one task "
                        f"in two domains): only in {domain_a}: {only_a or 'none'}; only in "
                        f"{domain_b}: {only_b or 'none'}.")
    backbone = backbone or DEFAULT_BACKBONE
    rows = compare_feature_spaces(a.paths, class_names(a), b.paths, class_names(b),
                                  spaces=tuple(spaces), backbone=backbone,
                                  classifier=classifier, random_state=random_state,
                                  cache_dir=cache_dir, progress=progress, weights=weights,
                                  arch=arch, use_cache=use_cache)
    return {"domain_a": str(domain_a), "domain_b": str(domain_b),
            "backbone": backbone if weights is None else f"{arch} ({weights})",
            "classifier": classifier, "seed": random_state, "classes": sorted(a.classes),
            "n_a": len(a.paths), "n_b": len(b.paths), "rows": rows,
            "seconds": time.perf_counter() - start}


def render(summary: dict) -> str:
    rows = [["space", "dim", "G_comp", "G_part(A)", "G_part(B)", "risk A→A", "A→B", "B→B",
             "B→A"]]
    for row in summary["rows"]:
        a, b = row["a_to_b"], row["b_to_a"]
        rows.append([row["space"], str(row["dim"]), f"{row['g_comp']:.3f}",
                     f"{row['g_part_a']:.3f}", f"{row['g_part_b']:.3f}", f"{a['risk_own']:.3f}",
                     f"{a['risk_other']:.3f}", f"{b['risk_own']:.3f}", f"{b['risk_other']:.3f}"])
    return (format_table(rows) + f"\nCDFG (lower carries over better) of {summary['backbone']} "
            f"features, {summary['classifier']} trained on 70% of one domain, risks on the "
            f"held-out 30% of both; A = {summary['domain_a']} ({summary['n_a']} images), B = "
            f"{summary['domain_b']} ({summary['n_b']} images)")
