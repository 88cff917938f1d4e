"""``transferkit fewshot-train``: learn a similarity (a Siamese head on frozen features,
:class:`~transferkit.methods.fewshot.siamese.SiameseSimilarity`) on background classes and
save it as a bundle for ``transferkit fewshot --similarity``."""

from __future__ import annotations

import os
import time
from pathlib import Path

from transferkit.backbones.registry import DEFAULT_BACKBONE
from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import skipped_fields, skipped_lines
from transferkit.outputs import removes_new_output_on_failure
from transferkit.train.distributed import is_main_process

NAME = "fewshot-train"
HELP = ("learn a similarity (Siamese head, contrastive loss) on background classes for "
        "fewshot")


def add_arguments(parser) -> None:
    parser.add_argument("background", nargs="+", help="folder(s) of class sub-folders (nested "
                        "ones too: alphabet/character/*.png)")
    _options.add_out(parser, "bundle folder", default="transferkit-similarity")
    _options.add_backbone(parser, help=f"default {DEFAULT_BACKBONE}", checkpoint=False)
    parser.add_argument("--layer", help="layer(s) whose frozen features feed the head (default "
                        "pre_logits)")
    parser.add_argument("--loss", choices=["contrastive", "triplet"], help="default contrastive")
    parser.add_argument("--epochs", type=int, help="default 30")
    _options.add_device(parser)
    _options.add_seed(parser)
    _options.add_cache(parser)


def read_leaf_classes(roots):
    """Images under each root, labelled by their folder relative to the root
    (``root/class/img`` or ``root/alphabet/character/img``, as Omniglot's background sets).
    With several roots the class names start with the root's name, so they stay apart."""
    import numpy as np

    from transferkit.data.dataset import list_image_files

    paths, labels = [], []
    roots = [Path(r) for r in ([roots] if isinstance(roots, (str, os.PathLike)) else roots)]
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: not a folder. Give folders of class sub-folders.")
        for path in list_image_files(root):
            if path.parent == root:
                raise DataError(f"{path}: images must lie in class sub-folders of {root}.")
            label = path.parent.relative_to(root).as_posix()
            paths.append(path)
            labels.append(f"{root.name}/{label}" if len(roots) > 1 else label)
    if not paths:
        raise DataError("no images found in " + ", ".join(map(str, roots)))
    return paths, np.asarray(labels)


@removes_new_output_on_failure
def run(background, out, backbone: str | None = None, layer: str = "pre_logits",
        pooling: str = "avg", loss: str = "contrastive", epochs: int = 30,
        random_state: int = 0, device: str = "auto", cache_dir=None, use_cache: bool = True,
        progress: bool = False, overwrite: bool = False, **options) -> dict:
    """Learn a similarity on the classes of ``background`` (one or more folders of class
    sub-folders, e.g. Omniglot's ``images_background``) and save it to ``out``, which must
    be new, empty or written by transferkit; a saved model there is replaced only with
    ``overwrite`` (see :mod:`transferkit.outputs`)."""
    import numpy as np

    from transferkit.bundle import save_bundle
    from transferkit.methods import create_method
    from transferkit.outputs import input_folders, prepare_output_folder

    start = time.perf_counter()
    paths, labels = read_leaf_classes(background)
    folders = [background] if isinstance(background, (str, os.PathLike)) else list(background)
    prepare_output_folder(out, command="fewshot-train", inputs=(*folders, *input_folders(paths)),
                          overwrite=overwrite)
    model = create_method("siamese", backbone=backbone or DEFAULT_BACKBONE, layer=layer,
                          pooling=pooling, loss=loss, epochs=epochs, random_state=random_state,
                          device=device, cache_dir=cache_dir, use_cache=use_cache,
                          progress=progress, **options)
    model.fit(paths, labels)
    if not is_main_process():  # trained in step with the main process, which writes and reports
        return {}
    metrics = {"eer_validation": model.eer_, "threshold": model.threshold_,
               "validation": model.validation_}
    save_bundle(model, out, metrics=metrics, overwrite=overwrite)
    return {"out": str(out), "n_images": len(paths), "n_classes": int(len(np.unique(labels))),
            "backbone": model.backbone, "layers": model._extractor().layers, "loss": loss,
            "epochs_run": model.epochs_run_, "best_epoch": model.best_epoch_,
            "validation": model.validation_, "eer_validation": model.eer_,
            "threshold": model.threshold_, **skipped_fields(model.skipped_),
            "seconds": round(time.perf_counter() - start, 3)}


def render(summary: dict) -> str:
    return "\n".join([
        f"learned a similarity on {summary['n_images']} images of {summary['n_classes']} classes "
        f"({summary['backbone']} {','.join(summary['layers'])}, {summary['loss']} loss, "
        f"{summary['epochs_run']} epochs, kept epoch {summary['best_epoch']})",
        f"verification on {summary['validation']}: EER {summary['eer_validation']:.3f} at "
        f"threshold λ = {summary['threshold']:.3f}",
        *skipped_lines(summary),
        f"wrote {summary['out']}"])
