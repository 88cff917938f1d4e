"""One self-contained HTML report for a run folder: what a person reads after ``fit``.

A run folder is what ``transferkit fit`` writes (a model bundle: ``config.json``,
``metrics.json``, and ``report_data.json`` with the validation predictions and a 2-D map
of the features), what ``transferkit layers`` writes (``layers.json`` + ``layers.png``)
or what ``transferkit adapt`` writes (``summary.json``, ``domain_map.png`` and the
trainings' ``train/*/metrics.csv``).
The report shows whatever of these is present: data summary and skipped files, method and
backbone, metrics with 95% confidence intervals, the confusion matrix, learning curves of
deep methods, the layer sweep, the feature map coloured by class, a gallery of the
most confidently wrong validation images, and for domain adaptation the source-only /
adapted / oracle accuracies with the domain maps before and after. Every picture is
embedded as a ``data:`` URI and there is no script, so the file can be mailed or
archived on its own.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np

from transferkit.errors import TransferkitError

REPORT_FILE = "report.html"
REPORT_DATA = "report_data.json"
ADAPT_SUMMARY = "summary.json"
GALLERY_SIZE = 12
THUMBNAIL_PX = 160
MAP_MAX_POINTS = 1500
# How write_report recognises the reports it may replace: its own tag, or the heading of
# reports written before the tag existed.
GENERATOR_TAG = '<meta name="generator" content="transferkit report">'
_OLD_REPORT_HEADING = "<h1>transferkit report</h1>"
_REPORT_HEAD_BYTES = 16384  # both lie before the first section

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:70em;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;border-bottom:1px solid #ddd;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.muted{color:#777}.figure{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:.8em}.gallery figure{margin:0;width:170px;font-size:.8em}
.gallery figcaption{overflow-wrap:anywhere}.gallery img{width:160px;height:160px;object-fit:cover;border:2px solid #c33}
.kv td{text-align:left}.warn{color:#a40}
"""


# --------------------------------------------------------------------------- collecting

def _png_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def feature_map(features: np.ndarray, labels, split, random_state: int = 0) -> dict:
    """2-D PCA of ``features`` (standardised): points, labels and the variance explained.

    PCA rather than t-SNE: it is deterministic, takes milliseconds, and its axes mean the
    same for every point (t-SNE distances between clusters are not interpretable).
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float64)
    labels, split = np.asarray(labels, dtype=object), np.asarray(split, dtype=object)
    if len(features) > MAP_MAX_POINTS:
        keep = np.sort(np.random.default_rng(random_state).choice(len(features), MAP_MAX_POINTS,
                                                                  replace=False))
        features, labels, split = features[keep], labels[keep], split[keep]
    if len(features) < 3 or features.shape[1] < 2:
        return {}
    scaled = StandardScaler().fit_transform(features)
    pca = PCA(n_components=2, random_state=random_state).fit(scaled)
    points = pca.transform(scaled)
    return {"method": "PCA", "points": np.round(points, 4).tolist(),
            "labels": [str(v) for v in labels], "split": [str(v) for v in split],
            "explained_variance": [float(v) for v in pca.explained_variance_ratio_]}


def collect_report_data(estimator, train_paths, train_labels, val_paths, val_labels,
                        val_proba: np.ndarray, val_ok: np.ndarray) -> dict:
    """What the report needs beyond config/metrics: validation predictions and a feature map.

    ``val_proba`` rows belong to the readable validation images (``val_ok``). Features
    come from ``estimator.embed_paths`` (cached for feature-based methods).
    """
    classes = [str(c) for c in estimator.classes_]
    val_paths = [str(p) for p in val_paths]
    readable = [p for p, ok in zip(val_paths, val_ok) if ok]
    truth = [str(t) for t, ok in zip(val_labels, val_ok) if ok]
    predictions = []
    for path, true, p in zip(readable, truth, val_proba):
        predicted = int(np.argmax(p))
        predictions.append({"path": path, "true": true, "predicted": classes[predicted],
                            "confidence": float(p[predicted])})
    data = {"classes": classes, "val_predictions": predictions, "feature_map": {}}
    if hasattr(estimator, "embed_paths"):
        paths = [str(p) for p in train_paths] + val_paths
        labels = [str(v) for v in train_labels] + [str(v) for v in val_labels]
        split = ["train"] * len(train_paths) + ["val"] * len(val_paths)
        features, ok = estimator.embed_paths(paths)
        keep = np.flatnonzero(ok)
        data["feature_map"] = feature_map(features, np.asarray(labels, dtype=object)[keep],
                                          np.asarray(split, dtype=object)[keep])
    return data


# --------------------------------------------------------------------------- rendering

# Every value below comes from files in the run folder, which anyone may have edited:
# text goes through _esc, numbers through _number, and nothing read from disk reaches
# the page any other way.
def _esc(value) -> str:
    return html.escape(str(value))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _number(value, spec: str = "") -> str:
    """``value`` formatted with ``spec`` when it is a number; anything else (an edited
    file may hold text where a number belongs) shown as escaped text."""
    return format(value, spec) if _is_number(value) else _esc(value)


def _table(header: list[str] | None, rows: list[list], cls: str = "") -> str:
    head = "<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def _pct(value, ci=None, decimals: int = 1) -> str:
    if not _is_number(value):
        return _esc(value)
    text = f"{100 * value:.{decimals}f}%"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(map(_is_number, ci)):
        text += f' <span class="muted">[{100 * ci[0]:.1f}–{100 * ci[1]:.1f}]</span>'
    return text


def _confusion_matrix(matrix: dict) -> str:
    labels, counts = matrix["labels"], matrix["matrix"]
    rows = []
    for label, row in zip(labels, counts):
        numbers = [value if _is_number(value) else 0 for value in row]
        total = max(1, sum(numbers))
        cells = [f"<b>{_esc(label)}</b>"]
        for value, number in zip(row, numbers):
            share = min(1.0, max(0.0, number / total))
            colour = f"rgba(40,110,200,{0.08 + 0.8 * share:.2f})" if number else "transparent"
            cells.append(f'<span style="display:block;background:{colour}">'
                         f'{_number(value)}</span>')
        rows.append(cells)
    return ("<p class=\"muted\">Rows: true class, columns: predicted class.</p>"
            + _table(["true \\ predicted", *labels], rows))


def _metrics_section(name: str, metrics: dict) -> str:
    rows = [["accuracy", _pct(metrics["accuracy"], metrics.get("accuracy_ci95"))],
            ["balanced accuracy", _pct(metrics["balanced_accuracy"])]]
    if "macro_f1" in metrics:
        rows.append(["macro-F1", _number(metrics["macro_f1"], ".3f")])
    rows.append(["images", _number(metrics.get("n", ""))])
    per_class = [[_esc(c), _number(v["precision"], ".3f"), _number(v["recall"], ".3f"),
                  _number(v["f1"], ".3f"), _number(v["support"])]
                 for c, v in metrics.get("per_class", {}).items()]
    out = f"<h2>{_esc(name)}</h2>" + _table(["measure", "value"], rows, "kv")
    out += "<p class=\"muted\">Brackets: 95% Wilson confidence interval of the accuracy.</p>"
    if per_class:
        out += _table(["class", "precision", "recall", "F1", "support"], per_class)
    if "confusion_matrix" in metrics:
        out += _confusion_matrix(metrics["confusion_matrix"])
    return out


def _learning_curves(history: list[dict], heading: str = "Learning curves", note: str = "") -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from transferkit.report.curves import draw_learning_curves

    figure = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    draw_learning_curves(figure, history)
    note = f'<p class="muted">{_esc(note)}</p>' if note else ""
    return (f'<h2>{_esc(heading)}</h2>{note}<img class="figure" alt="learning curves" '
            f'src="{_png_data_uri(figure)}">')


def _map_section(data: dict) -> str:
    from transferkit.report.scatter_svg import scatter_svg, svg_data_uri

    def share(value) -> str:  # plain text: the SVG writer escapes it
        return f"{100 * value:.0f}%" if _is_number(value) else str(value)

    variance = data.get("explained_variance", [0, 0])
    try:
        svg = scatter_svg(data["points"], data["labels"], data["split"],
                          x_label=f"PC 1 ({share(variance[0])} of variance)",
                          y_label=f"PC 2 ({share(variance[1])} of variance)",
                          title="features of training (o) and validation (^) images")
    except (TypeError, ValueError, IndexError, KeyError):
        return ('<h2>Feature map</h2><p class="warn">The feature map in report_data.json is '
                "not a list of 2-D points with labels; nothing to draw.</p>")
    return (f"<h2>Feature map</h2><p class=\"muted\">{_esc(data['method'])} of the standardised "
            f"features the classifier sees; colour = class.</p>"
            f'<img class="figure" alt="feature map" src="{svg_data_uri(svg)}">')


def _under(path: str, folder: Path | None) -> bool:
    """Whether ``path``, links followed, lies in ``folder`` (itself resolved)."""
    if folder is None:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL in the name
        return False


def _thumbnail(path: str, data_folder: Path | None) -> str | None:
    """The picture at ``path`` as a data URI, or None when it cannot be read or lies
    outside ``data_folder``: report_data.json may have been edited to name any file on
    this machine, and the report would carry it away."""
    from transferkit.data.images import load_image
    from transferkit.errors import ImageDecodeError

    if not _under(path, data_folder):
        return None
    try:
        image = load_image(path)
    except (ImageDecodeError, OSError):
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _data_folder(config: dict) -> Path | None:
    """The folder the run's images came from (``data.source`` of its config: the folder,
    or a CSV file's folder), resolved; None when the config does not say."""
    data = config.get("data")
    source = data.get("source") if isinstance(data, dict) else None
    if not isinstance(source, str) or not source:
        return None
    try:
        folder = Path(source).resolve()
        return folder.parent if folder.is_file() else folder
    except (OSError, RuntimeError, ValueError):
        return None


def _gallery(predictions: list[dict], data_folder: Path | None) -> str:
    wrong = sorted((p for p in predictions if p["true"] != p["predicted"]),
                   key=lambda p: -p["confidence"] if _is_number(p["confidence"]) else 0)
    out = "<h2>Most confidently wrong validation images</h2>"
    if not predictions:
        return out + "<p class=\"muted\">No validation predictions were recorded.</p>"
    if not wrong:
        return out + f"<p>None: all {len(predictions)} validation images are classified right.</p>"
    figures, missing = [], 0
    for item in wrong[:GALLERY_SIZE]:
        name = _esc(Path(str(item["path"])).name)
        uri = _thumbnail(str(item["path"]), data_folder)
        if uri is None:
            missing += 1
        picture = f'<img alt="{name}" src="{uri}">' if uri else ""
        figures.append(f'<figure>{picture}<figcaption>{name}<br>true <b>{_esc(item["true"])}'
                       f'</b>, predicted <b>{_esc(item["predicted"])}</b> '
                       f'({_pct(item["confidence"], decimals=0)})</figcaption></figure>')
    out += (f"<p>{len(wrong)} of {len(predictions)} validation images are misclassified; the "
            f"{min(len(wrong), GALLERY_SIZE)} the model was surest about:</p>")
    out += f'<div class="gallery">{"".join(figures)}</div>'
    if missing:
        out += (f'<p class="warn">{missing} image(s) are shown by name only: no longer readable '
                "at their path, or outside the run's data folder.</p>")
    return out


def _layer_sweep(run_dir: Path) -> str:
    sweep = json.loads((run_dir / "layers.json").read_text(encoding="utf-8"))
    rows = [[_esc(r["layer"]), _number(r["dim"]),
             f"{_number(r['balanced_accuracy_mean'], '.3f')} ± "
             f"{_number(r['balanced_accuracy_std'], '.3f')}",
             _number(r["seconds"], ".2f")] for r in sweep["rows"]]
    out = (f"<h2>Layer transferability</h2><p>{_number(sweep['folds'])}-fold cross-validation, "
           f"{_esc(sweep['classifier'])} probe, {_number(sweep['n_images'])} images. Best single layer: "
           f"<b>{_esc(sweep['best_layer'])}</b>; best overall: <b>{_esc(sweep['best_overall'])}</b>."
           "</p>" + _table(["layer", "dim", "balanced accuracy", "seconds"], rows))
    plot = run_dir / "layers.png"
    if plot.is_file():
        uri = "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode("ascii")
        out += f'<img class="figure" alt="accuracy per layer" src="{uri}">'
    return out


def _data_section(config: dict, metrics: dict) -> str:
    data = config.get("data", {})
    rows = []
    train_counts, val_counts = data.get("train_counts", {}), data.get("val_counts", {})
    for name in sorted(set(train_counts) | set(val_counts)):
        rows.append([_esc(name), _number(train_counts.get(name, 0)),
                     _number(val_counts.get(name, 0))])
    out = "<h2>Data</h2>"
    if data:
        out += (f"<p>Source: <code>{_esc(data.get('source', '?'))}</code>. Validation: "
                f"{_esc(data.get('validation', '?'))}.</p>")
    dropped = metrics.get("dropped_classes", [])
    if dropped:
        names = ", ".join(f"<code>{_esc(name)}</code>" for name in dropped)
        out += (f'<p class="warn">Warning: no training image of {len(dropped)} class(es) could '
                f"be read ({names}), so the model has not learnt them; see the skipped files "
                "below.</p>")
    if rows:
        out += _table(["class", "train images", "validation images"], rows)
    return out + _skipped_files(config.get("skipped", []))


def _skipped_files(skipped: list[dict]) -> str:
    if not skipped:
        return "<p>No file was skipped.</p>"
    items = "".join(f"<li><code>{_esc(s['reason'])}</code></li>" for s in skipped[:50])
    more = f"<li>… and {len(skipped) - 50} more</li>" if len(skipped) > 50 else ""
    return f'<p class="warn">{len(skipped)} unreadable file(s) were skipped:</p><ul>{items}{more}</ul>'


def _model_section(config: dict, metrics: dict) -> str:
    backbone = config.get("backbone", {})
    backbone_name = backbone.get("name") if isinstance(backbone, dict) else backbone
    rows = [["method", _esc(config.get("method", "?"))],
            ["backbone", _esc(backbone_name or metrics.get("backbone", "?"))]]
    params = config.get("params", {})
    for key in ("classifier", "layer", "strategy", "epochs", "lr", "lr_factor", "embedding", "pca"):
        if params.get(key) is not None:
            rows.append([key, _esc(params[key])])
    training = config.get("training", {})
    if training:
        rows.append(["epochs run / best epoch",
                     f"{_number(training.get('epochs_run'))} / {_number(training.get('best_epoch'))}"])
    if "seconds" in metrics:
        rows.append(["fit wall time", f"{_number(metrics['seconds'], '.1f')} s"])
    versions = config.get("versions", {})
    if versions:
        rows.append(["versions", _esc(", ".join(f"{k} {v}" for k, v in versions.items()))])
    return "<h2>Model</h2>" + _table(None, rows, "kv")


def _negative_transfer(check: dict) -> str:
    cls = "warn" if check.get("negative_transfer") else ""
    t, b = check["transferred_balanced_accuracy"], check["baseline_balanced_accuracy"]
    return (f"<h2>Negative-transfer check</h2><p class=\"{cls}\"><b>{_esc(check['verdict'])}</b>"
            f"</p><p>Transferred {_number(t['mean'], '.3f')} ± {_number(t['std'], '.3f')} vs "
            f"no-transfer baseline ({_esc(check.get('baseline', ''))}) "
            f"{_number(b['mean'], '.3f')} ± {_number(b['std'], '.3f')} balanced accuracy; "
            f"{_esc(check.get('protocol', ''))}, p = {_number(check['p_value'], '.3g')}.</p>")


def _embedded_png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="figure" alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _read_metrics_csv(path: Path) -> list[dict]:
    """The loop's ``metrics.csv`` as history rows (numbers parsed, blanks kept blank)."""
    import csv

    def number(value: str):
        try:
            return float(value)
        except ValueError:
            return value

    with open(path, newline="", encoding="utf-8") as handle:
        return [{key: ("" if value == "" else number(value)) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def _adaptation_sections(run_dir: Path, summary: dict) -> list[str]:
    """What ``transferkit adapt`` measured: accuracies, gap, A-distance, domain maps and
    the learning curves of each trained network."""
    def acc(value):
        return "—" if value is None else _pct(value)

    def count(key, default="?"):
        return _number(summary.get(key, default))

    rows = [["source only", acc(summary.get("source_only_accuracy"))],
            [_esc(summary.get("method", "?")), acc(summary.get("adapted_accuracy"))],
            ["target oracle", acc(summary.get("oracle_accuracy"))]]
    gap = summary.get("gap_closed")
    facts = [["family", _esc(summary.get("family", "?"))],
             ["source", f"<code>{_esc(summary.get('source', '?'))}</code> "
                        f"({count('n_source')} images)"],
             ["target (unlabelled)", f"<code>{_esc(summary.get('target', '?'))}</code> "
                                     f"({count('n_target')} images)"],
             ["labelled target images", count("n_target_labelled", 0)
              + (" (used by the method)" if summary.get("labelled_target_used_by_method")
                 else " (train the oracle only)")],
             ["target test images", count("n_target_test", 0)],
             ["gap closed", "—" if gap is None
              else f"{_pct(gap, decimals=0)} of source only → oracle"]]
    if summary.get("a_distance_before") is not None:
        def distance(when):
            measured = summary.get(f"domain_separability_{when}") or {}
            low, high = measured.get("interval") or (None, None)
            interval = "" if low is None else f" [{_number(low, '.2f')}, {_number(high, '.2f')}]"
            return _number(summary.get(f"a_distance_{when}"), ".2f") + interval

        reweighted = " (source re-weighted)" if summary.get("source_reweighted_after") else ""
        facts.append(["proxy A-distance (95% interval)",
                      f"{distance('before')} before, {distance('after')} after{reweighted}"])
    if summary.get("mmd_before") is not None:
        facts.append(["MMD (RBF kernel)", f"{_number(summary['mmd_before'], '.3f')} before, "
                                          f"{_number(summary.get('mmd_after'), '.3f')} after"])
    if summary.get("backbone"):
        trained = summary.get("trainable_groups")
        facts.append(["backbone", _esc(summary["backbone"]) + (
            "" if trained is None else f" (last {trained} layer group(s) trained from "
            f"<code>{_esc(summary.get('cut', '?'))}</code> on, the rest frozen and cached)")])
    if summary.get("criterion"):
        # A method trained in stages (SHOT) keeps an epoch of each: its last stage's is the
        # model, chosen among that stage's epochs only (an earlier stage's is another model).
        stages = list(dict.fromkeys(row["stage"] for row in summary.get("criterion_curve", [])
                                    if row.get("stage")))
        among = f" among its {_esc(stages[-1])} stage's epochs" if len(stages) > 1 else ""
        facts.append(["label-free criterion", _esc(summary["criterion"]) + {
            "snd": " (soft neighbourhood density of the target predictions; the epoch with "
                   f"the highest{among} was kept)",
            "dev": " (deep embedded validation: the held-out source risk re-weighted to the "
                   f"target; the epoch with the lowest{among} was kept)"}.get(summary["criterion"], "")])
    if summary.get("adaptation_weight") is not None:
        facts.append(["adaptation weight", _number(summary["adaptation_weight"], "g")])
    if summary.get("seconds") is not None:
        facts.append(["wall time", f"{_number(summary['seconds'], '.1f')} s"])
    if summary.get("demo"):
        facts.insert(0, ["demo", _esc(summary["demo"])])
    out = ["<h2>Domain adaptation</h2>" + _table(None, facts, "kv")
           + _table(["model", "target test accuracy"], rows)
           + "<p class=\"muted\">Gap closed = (adapted − source only) / (oracle − source only); "
             "negative means the method transferred negatively. The proxy A-distance is "
             "2(1 − 2ε) for a domain classifier's held-out error ε: 0 when the domains are "
             "indistinguishable, 2 when they are fully separable. MMD: the distance between the "
             "domains' kernel mean embeddings (0 for identical distributions).</p>"]
    if summary.get("weight_selection"):
        out.append("<h2>Adaptation weight chosen without target labels</h2>" + _table(
            ["adaptation weight", "criterion (higher is better; DEV negated)",
             "target test accuracy"],
            [[_number(row["adaptation_weight"], "g"), _number(row["criterion"], ".4f"),
              acc(row.get("target_accuracy"))] for row in summary["weight_selection"]])
            + "<p class=\"muted\">Each weight is a full fit; the one with the highest "
              "criterion is the method's row above. Target accuracy is shown for the "
              "reader, never used to choose.</p>")
    if (run_dir / "domain_map.png").is_file():
        out.append("<h2>Domain maps</h2><p class=\"muted\">2-D PCA of source (blue) and target "
                   "(orange) features, before adaptation (source-only model) and after.</p>"
                   + _embedded_png(run_dir / "domain_map.png", "domain maps"))

    def training_order(path: Path):  # source only, then the method, then the oracle
        name = path.relative_to(run_dir / "train").parts[0]
        return ({"source-only": 0, "oracle": 2}.get(name, 1), path.as_posix())

    for metrics in sorted((run_dir / "train").glob("**/metrics.csv"), key=training_order):
        history = _read_metrics_csv(metrics)
        if history:
            name = metrics.parent.relative_to(run_dir / "train").as_posix()
            note = ("Validation = a held-out part of the network's labelled training images: "
                    "source images, except for the oracle (target images).")
            if name == "adda/adapt":  # ADDA's adversarial stage has no labels to score
                note = ("ADDA's adversarial stage: accuracy is the domain discriminator's "
                        "(0.5 = fooled by the target encoder, 1.0 = domains told apart); no "
                        "validation.")
            if name.startswith("shot") and name.endswith("/target"):  # SHOT's second stage trains on unlabelled target images
                note = ("SHOT's target stage: training accuracy is the agreement with the "
                        "clustered pseudo-labels, not with true labels; validation = held-out "
                        "source images, scored by the frozen source classifier.")
            out.append(_learning_curves(history, f"Learning curves: {name}", note))
    out.append(_skipped_files(summary.get("skipped", [])))
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TransferkitError(f"{path}: cannot be read ({exc}).") from exc


def render_report(run_dir: str | os.PathLike) -> str:
    """The HTML text of the report of ``run_dir``."""
    run_dir = Path(run_dir)
    has_model = (run_dir / "config.json").is_file()
    has_sweep = (run_dir / "layers.json").is_file()
    adaptation = None
    if (run_dir / ADAPT_SUMMARY).is_file():
        adaptation = _read_json(run_dir / ADAPT_SUMMARY)
        if "adapted_accuracy" not in adaptation:
            adaptation = None
    if not (has_model or has_sweep or adaptation):
        raise TransferkitError(f"{run_dir}: not a run folder (no config.json from `transferkit "
                               "fit`, no layers.json from `transferkit layers`, no summary.json "
                               "from `transferkit adapt`).")
    try:
        title, sections = _sections(run_dir, adaptation, has_model, has_sweep)
    except TransferkitError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # A value of the wrong kind or a key missing in a file someone edited.
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no details"
        raise TransferkitError(f"{run_dir}: a file of this run folder is malformed "
                               f"({type(exc).__name__}: {detail}); it was edited or damaged. "
                               "Re-run the command that wrote it.") from exc
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"{GENERATOR_TAG}<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>transferkit report</h1><p class=\"muted\">{_esc(run_dir.resolve())}</p>"
            + "".join(sections) + "</body></html>")


def _sections(run_dir: Path, adaptation: dict | None, has_model: bool,
              has_sweep: bool) -> tuple[str, list[str]]:
    """The report's title and its sections, in reading order."""
    sections, title = [], run_dir.name
    if adaptation:
        title = f"{run_dir.name}: adapt {adaptation.get('method', '')}"
        sections += _adaptation_sections(run_dir, adaptation)
    if has_model:
        config = _read_json(run_dir / "config.json")
        metrics = _read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
        extra = _read_json(run_dir / REPORT_DATA) if (run_dir / REPORT_DATA).is_file() else {}
        title = f"{run_dir.name}: {config.get('method', 'model')}"
        sections.append(_model_section(config, metrics))
        sections.append(_data_section(config, metrics))
        if "val_metrics" in metrics:
            sections.append(_metrics_section("Validation", metrics["val_metrics"]))
        if "test_metrics" in metrics:
            sections.append(_metrics_section("Test", metrics["test_metrics"]))
        if "negative_transfer" in metrics:
            sections.append(_negative_transfer(metrics["negative_transfer"]))
        history = config.get("training", {}).get("history", [])
        if history:
            sections.append(_learning_curves(history))
        if extra.get("feature_map"):
            sections.append(_map_section(extra["feature_map"]))
        if extra:
            sections.append(_gallery(extra.get("val_predictions", []), _data_folder(config)))
    if has_sweep:
        sections.append(_layer_sweep(run_dir))
    return title, sections


def is_transferkit_report(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(_REPORT_HEAD_BYTES).decode("utf-8", "replace")
    except OSError:
        return False
    return head.startswith("<!DOCTYPE html>") and (GENERATOR_TAG in head
                                                   or _OLD_REPORT_HEADING in head)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for ``run_dir``; returns its path.

    An existing file is replaced only if it is a report transferkit wrote, or it is the
    default ``RUN_DIR/report.html`` of a folder transferkit wrote; a link there is refused
    (see :func:`transferkit.outputs.check_output_file`)."""
    from transferkit.outputs import check_output_file, is_transferkit_folder, write_text_atomic

    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    in_own_run_folder = out is None and is_transferkit_folder(Path(run_dir))
    target = check_output_file(path, overwrite=True, what="report file",
                               written_by_transferkit=lambda existing: in_own_run_folder
                               or is_transferkit_report(existing))
    text = render_report(run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    return path
