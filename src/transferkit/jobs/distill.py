"""``transferkit distill``: a saved teacher model teaches a small student network.

Hinton, Vinyals & Dean 2015. The teacher is any transferkit bundle (``transferkit fit
--out DIR``: a linear probe on EfficientNet-Lite features, a fine-tuned network...).
Its class log-probabilities on the training images of ``data`` (plus, optionally, a
folder of *unlabelled* images) are computed once and are the teacher logits; a
multinomial logistic regression's log-probabilities equal its logits up to a per-row
constant, which softmax ignores. Then the same student network is trained twice with
the same seed and schedule, alone (cross-entropy on the labels) and distilled
(:func:`transferkit.methods.distill.distillation_loss`), and both, and the teacher, are
scored on the validation split of ``data``. Inference speed is measured for the
teacher's network (+ its classifier) and the student's, in eager PyTorch on the same
CPU threads, on batches of 32 already-decoded images (decoding and resizing excluded).

``out`` receives ``summary.json`` and ``student/``, the distilled student as a bundle
(``config.json`` + ``student.safetensors``), loadable with
:meth:`transferkit.methods.distill.DistilledStudent.load`.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from transferkit.errors import DataError
from transferkit.jobs import _options
from transferkit.jobs._common import (
    class_names,
    format_table,
    load_model,
    skipped_fields,
    skipped_lines,
)
from transferkit.outputs import removes_new_output_on_failure
from transferkit.train.distributed import is_main_process

NAME = "distill"
HELP = ("knowledge distillation: a saved model (the teacher) teaches a small CNN; compares it "
        "with the same CNN trained alone and measures the speed-up")

SPEED_BATCH = 32
SPEED_SECONDS = 2.0  # least time each throughput measurement runs


def add_arguments(parser) -> None:
    parser.add_argument("--teacher", required=True, help="a model folder from `transferkit fit`")
    parser.add_argument("--data", required=True, help="labelled images with the teacher's class "
                        "names (class folders, optionally train/ val/; else a seeded split)")
    parser.add_argument("--student", choices=["small-cnn", "tiny-cnn"],
                        help="student network (default small-cnn)")
    _options.add_out(parser, "folder for summary.json and student/ (the distilled student: "
                     "config.json + student.safetensors)")
    parser.add_argument("--unlabelled", help="extra images without labels: the student learns "
                        "the teacher's outputs on them")
    parser.add_argument("--temperature", type=float, help="softmax temperature T of the soft "
                        "targets (default 4)")
    parser.add_argument("--alpha", type=float, help="weight α of the soft-target term; 1-α "
                        "weighs the labels' cross-entropy (default 0.9)")
    parser.add_argument("--epochs", type=int, help="student training epochs (default 40)")
    parser.add_argument("--image-size", type=int, help="student input size in pixels "
                        "(default 32)")
    _options.add_val_fraction(parser)
    _options.add_device(parser)
    _options.add_seed(parser)
    _options.add_cache(parser)


def teacher_logits(teacher, paths):
    """(log-probabilities of the readable images, ok mask, skipped) of a bundle's model."""
    import numpy as np

    proba, ok, skipped = teacher.predict_paths(list(paths))
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-8, None)), ok, skipped


def images_per_second(forward, batch, n_images: int = SPEED_BATCH,
                      min_seconds: float | None = None, min_batches: int = 3) -> float:
    """Throughput of ``forward(batch)`` (``n_images`` per call; one warm-up call first)."""
    import torch

    min_seconds = SPEED_SECONDS if min_seconds is None else min_seconds
    with torch.inference_mode():
        forward(batch)
        n, start = 0, time.perf_counter()
        while n < min_batches or time.perf_counter() - start < min_seconds:
            forward(batch)
            n += 1
        elapsed = time.perf_counter() - start
    return n * n_images / elapsed


def _teacher_network(teacher):
    """(forward on a list of batches, the batches, n parameters, description) of a teacher
    whose network we can run directly, else None (its speed is then not measured)."""
    import torch

    if hasattr(teacher, "_extractor") and hasattr(teacher, "predict_proba_features"):
        from transferkit.backbones.taps import make_tap_module

        extractor = teacher._extractor()
        parts = getattr(extractor, "extractors", [extractor])
        modules = [make_tap_module(e.backbone.model, e.layers, e.pooling).eval()
                   .to(memory_format=torch.channels_last) for e in parts]
        shapes = [tuple(e.input_shape) for e in parts]

        def forward(batches):
            features = []
            for module, batch in zip(modules, batches):
                out = module(batch)
                out = (out,) if isinstance(out, torch.Tensor) else out
                features.append(torch.cat([o.flatten(1) for o in out], 1))
            return teacher.predict_proba_features(torch.cat(features, 1).numpy())

        n_params = sum(p.numel() for e in parts for p in e.backbone.model.parameters())
        label = "+".join(e.backbone.name for e in parts) + " (eager PyTorch) + classifier"
    elif hasattr(teacher, "model_") and hasattr(teacher, "data_config_"):
        model = teacher.model_.eval().to(memory_format=torch.channels_last)
        shapes = [tuple(teacher.data_config_["input_size"])]

        def forward(batches):
            return torch.softmax(model(batches[0]), 1)

        n_params = sum(p.numel() for p in model.parameters())
        label = f"{getattr(teacher, 'arch_', 'network')} (eager PyTorch)"
    else:
        return None

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn((SPEED_BATCH, *shape), generator=generator)
               .contiguous(memory_format=torch.channels_last) for shape in shapes]
    return forward, batches, int(n_params), label


def measure_speed(teacher, student) -> dict:
    """Images/s of the teacher and the student (batches of 32, eager PyTorch, this CPU)."""
    import torch

    from transferkit.methods.distill import normalise_images

    size = int(student.image_size)
    model = student.model_.eval().to(memory_format=torch.channels_last)

    batch = torch.randint(0, 256, (SPEED_BATCH, 3, size, size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    student_speed = images_per_second(
        lambda b: torch.softmax(model(normalise_images(b).contiguous(memory_format=torch.channels_last)), 1),
        batch)
    student.model_ = model.to(memory_format=torch.contiguous_format)
    result = {"batch_size": SPEED_BATCH, "torch_threads": torch.get_num_threads(),
              "student_images_per_s": student_speed,
              "student_parameters": int(sum(p.numel() for p in model.parameters())),
              "teacher_images_per_s": None, "teacher_parameters": None, "speedup": None,
              "teacher_network": None,
              "note": "network forward passes on already-decoded images; JPEG decoding and "
                      "resizing are excluded for both"}
    network = _teacher_network(teacher)
    if network is not None:
        forward, batches, n_params, label = network
        teacher_speed = images_per_second(forward, batches)
        result.update(teacher_images_per_s=teacher_speed, teacher_parameters=n_params,
                      teacher_network=label, speedup=student_speed / teacher_speed)
    return result


def _check_classes(teacher_classes: list[str], data_classes: list[str], data) -> None:
    unknown = sorted(set(data_classes) - set(teacher_classes))
    if unknown:
        raise DataError(f"{data}: classes {unknown} are unknown to the teacher, which knows "
                        f"{teacher_classes}; the teacher must be trained on the same classes "
                        "(same class-folder names).")


def _accuracy(proba, classes, truth) -> float:
    import numpy as np

    return float(np.mean(np.asarray(classes, dtype=object)[proba.argmax(axis=1)] == truth))


@removes_new_output_on_failure
def run(teacher, data, out=None, student: str = "small-cnn", temperature: float = 4.0,
        alpha: float = 0.9, epochs: int = 40, image_size: int = 32, unlabelled=None,
        val_fraction: float = 0.2, batch_size: int = 64, lr: float = 3e-3,
        random_state: int = 0, device: str = "auto", cache_dir=None, use_cache: bool = True,
        progress: bool = False, measure: bool = True, overwrite: bool = False) -> dict:
    """Distil the bundle ``teacher`` into ``student`` on the images of ``data``.

    ``data``: a class-folder tree (with ``train/`` and ``val/`` parts, else a seeded
    stratified split, ``val_fraction`` per class) or a CSV, with the teacher's class
    names. ``unlabelled``: a folder of extra images without labels (teacher targets
    only). ``out`` must be new, empty or written by transferkit, apart from the inputs; a
    finished run there is replaced only with ``overwrite`` (see :mod:`transferkit.outputs`).
    Returns the summary that ``transferkit distill --json`` prints.
    """
    import numpy as np

    from transferkit.bundle import read_config, save_bundle
    from transferkit.data import collect_images, load_dataset
    from transferkit.methods import create_method
    from transferkit.outputs import input_folders, prepare_output_folder

    start = time.perf_counter()
    config = read_config(teacher)
    teacher_model = load_model(teacher, cache_dir, use_cache, progress)
    teacher_classes = [str(c) for c in teacher_model.classes_]
    splits = load_dataset(data, val_fraction=val_fraction, random_state=random_state)
    _check_classes(teacher_classes, list(splits.classes), data)
    train, val = splits.train, splits.val
    options = dict(student=student, temperature=temperature, alpha=alpha, epochs=int(epochs),
                   image_size=int(image_size), batch_size=int(batch_size), lr=lr, device=device,
                   random_state=random_state, progress=progress)
    create_method("distill", **options)._check_params()  # fail before the slow part
    extra = collect_images([unlabelled]) if unlabelled is not None else []
    if out is not None:
        image_folders = input_folders(train.paths, val.paths,
                                      splits.test.paths if splits.test else None, extra)
        prepare_output_folder(out, command="distill", overwrite=overwrite,
                              inputs=(teacher, data, unlabelled, *image_folders))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable images: reported once, in the summary
        paths = list(train.paths) + list(extra)
        logits, teacher_ok, skipped = teacher_logits(teacher_model, paths)
        probe = create_method("distill", **options)
        images, image_ok, image_skipped = probe.read_images(paths)
    ok = teacher_ok & image_ok
    rows_logits = np.flatnonzero(teacher_ok)
    rows_images = np.flatnonzero(image_ok)
    logits = logits[np.isin(rows_logits, np.flatnonzero(ok))]
    images = images[np.isin(rows_images, np.flatnonzero(ok))]
    labels = np.concatenate([class_names(train), np.full(len(extra), None, dtype=object)])[ok]
    is_labelled = np.arange(len(paths))[ok] < len(train.paths)
    if not is_labelled.any():
        raise DataError(f"{data}: none of the training images could be read.")
    images_np = images.permute(0, 2, 3, 1).numpy()

    fit_seconds = {}
    t0 = time.perf_counter()
    alone = create_method("distill", **options).fit(images_np[is_labelled], labels[is_labelled],
                                                    classes=teacher_classes)
    fit_seconds["alone"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    distilled = create_method("distill", **options).fit(images_np, labels, teacher_logits=logits,
                                                        classes=teacher_classes)
    fit_seconds["distilled"] = time.perf_counter() - t0
    if not is_main_process():  # trained in step with the main process, which writes and reports
        return {}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher_proba, teacher_val_ok, val_skipped = teacher_model.predict_paths(val.paths)
        val_images, val_ok, _ = probe.read_images(val.paths)
    truth = class_names(val)
    val_rows = val_ok & teacher_val_ok
    keep_teacher = np.isin(np.flatnonzero(teacher_val_ok), np.flatnonzero(val_rows))
    keep_student = np.isin(np.flatnonzero(val_ok), np.flatnonzero(val_rows))
    if not val_rows.any():
        raise DataError(f"{data}: none of the validation images could be read.")
    val_images_np = val_images[keep_student].permute(0, 2, 3, 1).numpy()
    scores = {
        "teacher_accuracy": _accuracy(teacher_proba[keep_teacher], teacher_model.classes_,
                                      truth[val_rows]),
        "student_alone_accuracy": float(np.mean(alone.predict(val_images_np) == truth[val_rows])),
        "student_distilled_accuracy": float(np.mean(distilled.predict(val_images_np)
                                                    == truth[val_rows])),
    }
    scores["distillation_gain"] = scores["student_distilled_accuracy"] - scores["student_alone_accuracy"]
    all_skipped = list(skipped) + [s for s in image_skipped if s not in skipped] + list(val_skipped)
    summary = {
        "teacher": str(teacher), "teacher_method": config.get("method"),
        "teacher_backbone": getattr(teacher_model, "backbone", None),
        "teacher_trained_on": (config.get("data") or {}).get("source"),
        "data": str(data), "validation": splits.validation_source,
        "student": student, "image_size": int(image_size), "temperature": float(temperature),
        "alpha": float(alpha), "epochs": int(epochs), "seed": int(random_state),
        "classes": teacher_classes,
        "n_train": int(is_labelled.sum()), "n_unlabelled": int((~is_labelled).sum()),
        "n_val": int(val_rows.sum()), **scores, "fit_seconds": fit_seconds,
        **skipped_fields(all_skipped),
    }
    teacher_data = config.get("data") or {}
    if summary["teacher_trained_on"] and Path(summary["teacher_trained_on"]) == Path(data).resolve() \
            and teacher_data.get("validation") != splits.validation_source:
        summary["note"] = ("the teacher was fitted on this folder with another train/validation "
                           f"split ({teacher_data.get('validation')}), so it saw some of these "
                           "validation images and its accuracy here is optimistic (the "
                           "students never see validation images)")
    if measure:
        summary["speed"] = measure_speed(teacher_model, distilled)
    if out is not None:
        from transferkit.outputs import write_json_atomic

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        metrics = {k: summary[k] for k in ("student_alone_accuracy", "student_distilled_accuracy",
                                           "teacher_accuracy")}
        # student/ is this job's own entry in a folder checked above: it may be replaced.
        save_bundle(distilled, out / "student", metrics=metrics,
                    extra={"teacher": str(teacher), "data": str(data)}, overwrite=True)
        summary["files"] = {"student": str(out / "student"), "summary": str(out / "summary.json")}
        summary["seconds"] = time.perf_counter() - start
        write_json_atomic(out / "summary.json", summary)
    summary["seconds"] = time.perf_counter() - start
    return summary


def render(summary: dict) -> str:
    speed = summary.get("speed") or {}

    def rate(key):
        value = speed.get(key)
        return "—" if value is None else f"{value:.0f}"

    lines = [f"teacher {summary['teacher']} ({summary['teacher_method']}) → student "
             f"{summary['student']} at {summary['image_size']}×{summary['image_size']}, "
             f"T = {summary['temperature']:g}, α = {summary['alpha']:g}, {summary['epochs']} "
             f"epochs; {summary['n_train']} labelled + {summary['n_unlabelled']} unlabelled "
             f"training images, {summary['n_val']} validation images",
             format_table([["", "val accuracy", "images/s (batch 32)"],
                           ["teacher", f"{summary['teacher_accuracy']:.3f}",
                            rate("teacher_images_per_s")],
                           ["student alone", f"{summary['student_alone_accuracy']:.3f}",
                            rate("student_images_per_s")],
                           ["student distilled", f"{summary['student_distilled_accuracy']:.3f}",
                            rate("student_images_per_s")]])]
    if speed.get("speedup"):
        lines.append(f"student {speed['speedup']:.0f}× faster than the teacher ({speed['note']})")
    if summary.get("note"):
        lines.append(f"note: {summary['note']}")
    lines += skipped_lines(summary)
    if summary.get("files"):
        lines.append(f"wrote {summary['files']['summary']} and {summary['files']['student']}/")
    return "\n".join(lines)
