"""``transferkit export``: a saved model as one self-contained ONNX file."""

from __future__ import annotations

import os

NAME = "export"
HELP = "write a saved model as one ONNX file (predict with it without PyTorch)"


def add_arguments(parser) -> None:
    parser.add_argument("model_dir", metavar="model", help="model folder written by "
                        "`transferkit fit`, `transferkit distill` (its student) or "
                        "`transferkit segment fit`")
    parser.add_argument("--out", help="the .onnx file to write (default: beside the model "
                        "folder, MODEL.onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an .onnx file "
                        "transferkit exported before (never any other file)")


def run(model_dir: str | os.PathLike, out: str | os.PathLike | None = None,
        overwrite: bool = False) -> dict:
    """Export the model in ``model_dir`` to ``out``; the summary names the file, the
    classes, each input's resize rule and the check against the bundle."""
    import time

    from transferkit.export import export_model

    start = time.perf_counter()
    summary = export_model(model_dir, out, overwrite=overwrite)
    return {**summary, "seconds": time.perf_counter() - start}


def render(summary: dict) -> str:
    check = summary["export_check"]
    sizes = ", ".join("x".join(map(str, spec["resize_rule"]["crop"]))
                      for spec in summary["inputs"])
    if summary.get("task") == "segmentation":
        return (f"wrote {summary['out']} ({summary['bytes'] / 2**20:.1f} MiB): segmentation, "
                f"{len(summary['classes'])} pixel classes, input {sizes} uint8 RGB\n"
                f"checked on {check['images']} images: largest per-pixel probability difference "
                f"to the model folder {check['max_abs_difference']:.1e}, same class at "
                f"{100 * check['same_class_pixels']:.3f}% of pixels (elsewhere two classes tie)")
    return (f"wrote {summary['out']} ({summary['bytes'] / 2**20:.1f} MiB): {summary['method']}, "
            f"{len(summary['classes'])} classes, input {sizes} uint8 RGB\n"
            f"checked on {check['images']} images: largest probability difference to the model "
            f"folder {check['max_abs_difference']:.1e}, same top-1 class: "
            f"{'yes' if check['same_top1'] else 'no'}")
