"""Deep domain adaptation of a pretrained backbone on Office-31 (issue 18).

The six ordered pairs A→W, D→W, W→D, A→D, D→A, W→A (source labelled, target unlabelled
for adaptation, all of the target scored), source only and each deep method on the same
network (EfficientNet-Lite0 → bottleneck 256 → classifier; the last ``--trainable``
layer groups train on cached activations of the frozen rest), ``--seeds`` seeds per
cell, and the row chosen without target labels: for each pair and seed, the method's
adaptation weight from a small grid picked by a label-free criterion (SND, or DEV),
next to what the target labels would have picked. Every run is appended to
``benchmarks/domain_office31_runs.json`` and the RESULTS.md section is rebuilt from all
runs with the same settings.

    python -m benchmarks.bench_domain_office31 --prewarm            # the activation cache
    python -m benchmarks.bench_domain_office31 --pairs A-W --methods deep-source-only dann
    python -m benchmarks.bench_domain_office31 --table              # rebuild the section

On a GPU the whole backbone can train (``--trainable 8``: every layer group of Lite0, the
reference protocol); ``--device cuda --deadline S --runs-file F`` then run one pair per
process side by side, each stopping before a run that would start after S seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks._common import SHARED_DATASETS, machine_line, write_section

ROOT = SHARED_DATASETS / "office31"
DOMAINS = {"A": "amazon", "D": "dslr", "W": "webcam"}
PAIRS = ["A-W", "D-W", "W-D", "A-D", "D-A", "W-A"]
RUNS = Path(__file__).with_name("domain_office31_runs.json")
METHODS = ["deep-source-only", "dann", "cdan", "mcc", "dan", "deep-coral", "shot"]
LABELS = {"deep-source-only": "source only", "dann": "DANN", "cdan": "CDAN+E", "mcc": "MCC",
          "dan": "DAN (MK-MMD)", "deep-coral": "Deep CORAL", "shot": "SHOT"}
# Transfer-Learning-Library, ResNet-50 fine-tuned end to end on a GPU (office31 README).
PUBLISHED = {"source only": {"A-W": 75.8, "D-W": 95.5, "W-D": 99.0, "A-D": 79.3, "D-A": 63.6,
                             "W-A": 63.8, "avg": 79.5},
             "DAN (MK-MMD)": {"avg": 83.7}, "DANN": {"avg": 86.1}, "CDAN+E": {"avg": 87.7},
             "MCC": {"avg": 89.6},
             "SHOT": {"avg": 88.6}}  # SHOT's: its paper (Liang et al. 2020, Table 2), not TLL


def domain(letter: str, root: Path = ROOT):
    from transferkit.jobs._common import read_labelled_folder

    return read_labelled_folder(root / DOMAINS[letter], what=f"office31/{DOMAINS[letter]}")


def prewarm(trainable_values, views: int) -> None:
    """Fill the activation cache for every domain at every cut the runs need, in one pass."""
    from transferkit.methods.domain._pretrained import PretrainedInputs
    from transferkit.train.frozen_prefix import prefix_activations

    inputs = [PretrainedInputs(trainable=t, views=views) for t in trainable_values]
    first = inputs[0]
    cuts = sorted({i.cut for i in inputs})
    for letter in DOMAINS:
        images = domain(letter)
        started = time.perf_counter()
        result = prefix_activations(first.chain, cuts, images.paths, first._policy(True),
                                    first.backbone.identity(), progress=True)
        print(f"{DOMAINS[letter]}: {len(images.paths)} images × {views + 1} views at cuts "
              f"{[first.chain.cut_name(c) for c in cuts]}: {result.n_computed} computed, "
              f"{result.n_cached} cached, {time.perf_counter() - started:.0f} s", flush=True)


RESIZED_NOTE = ("every image resized to 256 px on its short side (Lanczos, JPEG quality 85) "
                "to fit the GPU machine's 64 MiB transfer; the eval transform's own resize is "
                "256, so the centre crops are those of the shared set up to JPEG re-encoding")


def resize_copy(destination: Path, root: Path = ROOT, side: int = 256, quality: int = 85) -> None:
    """The copy of Office-31 the GPU runs read (:data:`RESIZED_NOTE`)."""
    from PIL import Image

    for path in sorted(root.glob("*/*/*")):
        out = destination / path.relative_to(root)
        out.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = side / min(image.size)
            if scale < 1:
                image = image.resize((round(image.width * scale), round(image.height * scale)),
                                     Image.LANCZOS)
            image.save(out.with_suffix(".jpg"), quality=quality)


def apply_variant(variant: str) -> None:
    """Diagnostic changes to the whole-backbone protocol, '+'-joined: ``bn-train`` puts the
    backbone's BatchNorm layers in training mode (batch statistics, as before 2026-11-27;
    the default keeps their ImageNet statistics), ``lrX`` trains the backbone at X × the
    heads' rate (default 0.1)."""
    from transferkit.methods.domain import _pretrained

    for part in filter(None, variant.split("+")):
        if part == "bn-train":
            _pretrained._BackboneTail.train = _pretrained.nn.Module.train
        elif part.startswith("lr"):
            _pretrained.BACKBONE_LR_FACTOR = float(part[2:])
        else:
            raise SystemExit(f"unknown variant {part!r}")


def load_runs() -> list[dict]:
    return json.loads(RUNS.read_text()) if RUNS.exists() else []


def save_run(run: dict, path: Path = RUNS) -> None:
    """Append one run; locked, as two of these scripts may run side by side."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = json.loads(path.read_text()) if path.exists() else []
        runs.append(run)
        path.write_text(json.dumps(runs, indent=1) + "\n")


def fit_one(method: str, source, target, settings: dict, seed: int, weight=None,
            device: str = "auto") -> dict:
    """One fit; besides the final target accuracy, each epoch's label-free criteria and
    target accuracy (read by this benchmark only, to measure how well the criteria choose)."""
    import torch

    from transferkit.methods import create_method
    from transferkit.methods.domain._deep_base import chunks

    options = {k: v for k, v in settings.items() if k in ("epochs", "trainable", "views",
                                                             "criterion")}
    options["random_state"] = seed
    options["device"] = device
    if weight is not None:
        options["adaptation_weight"] = weight
    model = create_method(method, **options)
    classes = np.unique(source.labels)
    target_y = torch.as_tensor(np.searchsorted(classes, np.asarray(target.labels)))
    criteria = type(model)._criterion_fn

    def with_target_accuracy(data):
        evaluate = criteria(model, data)
        images = data.centre(data.target)

        def both(network):
            row = evaluate(network)
            on = next(network.parameters()).device
            predicted = torch.cat([network(chunk.to(on)).argmax(1).cpu()
                                   for chunk in chunks(images)])
            row["target_accuracy"] = float((predicted == target_y).float().mean())
            return row

        return both

    model._criterion_fn = with_target_accuracy
    started = time.perf_counter()
    model.fit(source.paths, source.labels, target.paths)
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(model.predict(target.paths) == np.asarray(target.labels)))
    epochs = [{k: row.get(k) for k in ("epoch", "snd", "dev", "target_accuracy", "val_accuracy")}
              for row in model.history_]
    return {"accuracy": accuracy, "seconds": round(seconds, 1), "history": epochs,
            "adaptation_weight": float(model.adaptation_weight)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prewarm", action="store_true")
    parser.add_argument("--pairs", nargs="+", default=PAIRS)
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--trainable", type=int, default=0)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--criterion", default="dev")
    parser.add_argument("--weights", nargs="*", type=float, default=[],
                        help="adaptation-weight grid (each a separate run, for the criterion row)")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the Office-31 folder (amazon/, dslr/, webcam/)")
    parser.add_argument("--images-note", default="", choices=["", "resized"],
                        help="'resized': the images are the --resize-to copy (kept in each run)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: two of these side by side on 2 cores)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="start no run after this many seconds")
    parser.add_argument("--more-methods", nargs="*", default=[],
                        help="methods run after the others, with the first seed only")
    parser.add_argument("--runs-file", type=Path, default=RUNS)
    parser.add_argument("--variant", default="", help="see apply_variant")
    parser.add_argument("--resize-to", type=Path, default=None,
                        help="write the resized copy the GPU runs read, and stop")
    args = parser.parse_args(argv)
    if args.resize_to is not None:
        resize_copy(args.resize_to, args.root)
        return
    if args.prewarm:
        prewarm(sorted({0, args.trainable}), args.views)
        return
    import torch

    torch.set_num_threads(args.threads)
    settings = {"epochs": args.epochs, "trainable": args.trainable, "views": args.views,
                "criterion": args.criterion}
    if args.variant:
        apply_variant(args.variant)
        settings["variant"] = args.variant
    started = time.perf_counter()
    machine = machine_line()
    device_name = torch.cuda.get_device_name() if args.device != "cpu" and \
        torch.cuda.is_available() else None
    if not args.table:
        for pair in args.pairs:
            source, target = (domain(letter, args.root) for letter in pair.split("-"))
            plan = [(seed, method) for seed in args.seeds for method in args.methods]
            plan += [(args.seeds[0], method) for method in args.more_methods]
            for seed, method in plan:
                grid = args.weights if (args.weights and method != "deep-source-only") else [None]
                for weight in grid:
                    if args.deadline is not None and \
                            time.perf_counter() - started > args.deadline:
                        print(f"deadline: {pair} {method} seed {seed} not run", flush=True)
                        continue
                    result = fit_one(method, source, target, settings, seed, weight,
                                     args.device)
                    run = {"pair": pair, "method": method, "seed": seed, **settings,
                           "weight_grid": weight is not None, **result, "machine": machine,
                           "device": device_name,
                           "images": RESIZED_NOTE if args.images_note else None}
                    save_run(run, args.runs_file)
                    print(json.dumps(run), flush=True)
    write_table(settings)


def _cell(values) -> str:
    if not values:
        return "—"
    text = f"{100 * np.mean(values):.1f}"
    return text + (f" ± {100 * np.std(values):.1f}" if len(values) > 1 else "") + f" (n={len(values)})"


def _last_stage(history: list[dict]) -> list[dict]:
    """The epochs of a run's last training stage (a staged method, SHOT, trains twice and
    the criterion picks among the second stage's epochs only)."""
    starts = [i for i, row in enumerate(history) if row.get("epoch") == 1]
    return history[starts[-1]:] if starts else history


def _chosen(history: list[dict], key: str) -> dict:
    rows = [r for r in _last_stage(history) if r.get(key) is not None]
    return (min if key == "dev" else max)(rows, key=lambda r: r[key])


GPU_PAIRS = ["D-W", "W-D", "A-D", "D-A", "W-A", "A-W"]
VARIANT_LABELS = {"bn-train": "BatchNorm on batch statistics (before)",
                  "bn-train+lr0.01": "batch statistics, backbone lr × 0.01",
                  "": "BatchNorm statistics kept (the default now)",
                  "lr0.01": "statistics kept, backbone lr × 0.01"}


def write_gpu_table() -> None:
    """The whole backbone trained on a GPU, by BatchNorm treatment, against the frozen one.

    One measure for every row: target accuracy at the epoch DEV keeps, before AdaBN (what
    the runs' histories hold): the MCC runs with the statistics kept were made while AdaBN
    still re-estimated the backbone's frozen layers too, so their final accuracy is not what
    the code gives now."""
    runs = [r for r in load_runs() if not r.get("weight_grid") and r["epochs"] == 10
            and r["views"] == 4 and r["criterion"] == "dev"
            and (r["trainable"] == 0 or (r["trainable"] == 8 and r.get("device")))]
    if not any(r["trainable"] == 8 for r in runs):
        return

    def kept(run):
        return _chosen(run["history"], "dev")["target_accuracy"]

    rows = [("frozen backbone (CPU, table above)", 0, None)] + [
        (VARIANT_LABELS[v], 8, v) for v in VARIANT_LABELS]
    machines = sorted({r["machine"].split("; load average")[0] for r in runs if r.get("device")})
    devices = sorted({r["device"] for r in runs if r.get("device")})
    notes = sorted({r["images"] for r in runs if r.get("images")})
    lines = ["`python -m benchmarks.bench_domain_office31 --trainable 8 --device cuda --variant "
             "V --root RESIZED …` (one pair per process, six side by side; "
             "`--table --trainable 8` rebuilds this). " + "; ".join(machines) + "; "
             + ", ".join(devices) + ".", "",
             "Images: " + "; ".join(notes) + ".", "",
             "The whole of EfficientNet-Lite0 trains (all 8 layer groups, at 0.1 × the heads' "
             "learning rate unless said), otherwise the protocol of the table above (10 epochs, "
             "centre + 4 augmented views, SGD 0.01, DEV keeps the epoch). **Every cell is the "
             "target accuracy at the epoch DEV keeps, before AdaBN** (%, mean (n)), the one "
             "measure all these runs hold: see `write_gpu_table`. The frozen-backbone row is "
             "the table above's runs under the same measure.", "",
             "| backbone | method | " + " | ".join(p.replace("-", "→") for p in GPU_PAIRS)
             + " |", "|---|---|" + "---|" * len(GPU_PAIRS)]
    for label, trainable, variant in rows:
        for method in ("deep-source-only", "mcc"):
            cells = []
            for pair in GPU_PAIRS:
                values = [kept(r) for r in runs if r["trainable"] == trainable
                          and r["method"] == method and r["pair"] == pair
                          and (trainable == 0 or r.get("variant", "") == variant)]
                cells.append(f"{100 * np.mean(values):.1f} ({len(values)})" if values else "—")
            if any(c != "—" for c in cells):
                lines.append(f"| {label} | {LABELS[method]} | " + " | ".join(cells) + " |")
    seconds = [r["seconds"] for r in runs if r["trainable"] == 8]
    lines += ["", f"Fit time of one run: {min(seconds):.0f}–{max(seconds):.0f} s with five or "
              "six runs sharing the GPU (the first run of each process also decoded its pair's "
              "views)."]
    write_section("domain-office31-gpu", "## Office-31: the whole backbone trained on a GPU "
                  "(BatchNorm statistics kept vs batch statistics)\n\n" + "\n".join(lines))


def write_table(settings: dict) -> None:
    if settings["trainable"] >= 8:
        write_gpu_table()
        return
    runs = [r for r in load_runs() if all(r.get(k) == v for k, v in settings.items())
            and r.get("variant") == settings.get("variant")]
    if not runs:
        return
    plain = [r for r in runs if not r.get("weight_grid")]
    # Runs made elsewhere (a GPU machine) carry their machine line and device.
    # One line per machine; the load average each run started at varies, the machine not.
    machines = sorted({r["machine"].split("; load average")[0] for r in runs if r.get("machine")})
    dates = sorted({r["machine"].rsplit("; ", 1)[-1] for r in runs if r.get("machine")})
    devices = sorted({r["device"] for r in runs if r.get("device")})
    notes = sorted({r["images"] for r in runs if r.get("images")})
    whole = settings["trainable"] >= 8
    if whole:
        trained = ("the whole backbone (all 8 layer groups, at a tenth of the heads' learning "
                   "rate) trains with the bottleneck and heads from the images themselves, each "
                   "image decoded and augmented once per view")
    elif settings["trainable"]:
        trained = (f"the last {settings['trainable']} layer group(s) of the backbone train "
                   "with the bottleneck and heads (their BatchNorm layers keep the pretrained "
                   "statistics, see domain-office31-gpu), the frozen rest runs once per image "
                   "and view")
    else:
        trained = ("the bottleneck and heads train on the pooled features; the frozen "
                   "backbone runs once per image and view")
    lines = [f"`python -m benchmarks.bench_domain_office31 --epochs {settings['epochs']} "
             f"--trainable {settings['trainable']} --views {settings['views']} --criterion "
             f"{settings['criterion']} [--pairs …] [--methods …] [--seeds …]"
             + (" --device cuda" if devices else "") + "`; every run is kept "
             "in `benchmarks/domain_office31_runs.json`. "
             + ("; ".join(machines) + (f"; {', '.join(devices)}" if devices else "")
                + f"; runs of {', '.join(dates)}" if machines else machine_line()), ""]
    if notes:
        lines += ["Images: " + "; ".join(notes), ""]
    lines += ["EfficientNet-Lite0 (ImageNet, the bundled weights) → bottleneck 256 → linear "
             f"classifier; {trained} (centre crop + {settings['views']} augmented crops"
             + (")" if whole else ", cached)") + ". SGD 0.01, momentum 0.9 "
             "(Nesterov), annealed; "
             f"32 + 32 images per step, {settings['epochs']} epochs of max(n_source, n_target) "
             f"images; the epoch kept is the one with the best {settings['criterion'].upper()} "
             "(no target labels); target statistics at prediction (AdaBN) for the adapting "
             "methods. Each method's own default adaptation weight. SHOT trains twice: the "
             "source-only network, then its features on the target alone with the "
             "classifier frozen (DEV keeps an epoch of each stage). Target accuracy on all "
             "target images, %, mean ± std over seeds.", ""]
    lines += ["| method | " + " | ".join(p.replace("-", "→") for p in PAIRS)
              + " | avg | gain over source only | published avg (ResNet-50; TLL, SHOT's "
              "paper) |",
              "|" + "---|" * (len(PAIRS) + 4)]
    averages = {}
    for method in METHODS:
        per_pair = {pair: [r["accuracy"] for r in plain if r["pair"] == pair
                           and r["method"] == method] for pair in PAIRS}
        if not any(per_pair.values()):
            continue
        complete = all(per_pair.values())
        avg = 100 * np.mean([np.mean(v) for v in per_pair.values()]) if complete else None
        averages[method] = avg
        base = averages.get("deep-source-only")
        gain = "" if avg is None or base is None or method == "deep-source-only" \
            else f"{avg - base:+.1f}"
        lines.append(f"| {LABELS[method]} | " + " | ".join(_cell(per_pair[p]) for p in PAIRS)
                     + f" | {'' if avg is None else f'{avg:.1f}'} | {gain} | "
                     f"{PUBLISHED.get(LABELS[method], {}).get('avg', '')} |")
    lines.append("| TLL source only (ResNet-50) | " + " | ".join(
        str(PUBLISHED["source only"][p]) for p in PAIRS) + " | 79.5 | | |")
    seconds = {pair: [r["seconds"] for r in plain if r["pair"] == pair] for pair in PAIRS}
    per_pair = ", ".join(f"{p.replace('-', '→')} {np.mean(v):.0f}" for p, v in seconds.items()
                         if v)
    if devices:
        lines += ["", f"Fit time of one method on a pair (s, mean over its runs; on the GPU, "
                  f"the six pairs' processes side by side): {per_pair}. The first run of each "
                  "process also decoded its pair's images and views."]
    else:
        lines += ["", "Fit time of one method on a pair (s, mean over its runs; cache warm, "
                  f"two runs side by side on the 2 cores): {per_pair}. The first run of a pair "
                  "also reads (or on a cold cache computes) the activations: `--prewarm` "
                  "computed all 4,110 images × 5 views once in 29 min."]
    # How well the criteria choose the epoch: target accuracy at the epoch each picks
    # (before AdaBN), against the last epoch and the best epoch in hindsight.
    rows = [r for r in plain if r.get("history") and r["history"][0].get("target_accuracy")
            is not None and r["history"][0].get("dev") is not None]
    if rows:
        def mean(values):
            return f"{100 * np.mean(values):.1f}"

        best = [max(h["target_accuracy"] for h in _last_stage(r["history"])) for r in rows]
        dev = [_chosen(r["history"], "dev")["target_accuracy"] for r in rows]
        snd_ = [_chosen(r["history"], "snd")["target_accuracy"] for r in rows]
        last = [r["history"][-1]["target_accuracy"] for r in rows]

        def near(picked):
            return np.mean([b - p <= 0.005 for b, p in zip(best, picked)])

        lines += ["", "### Choosing the epoch without target labels", "",
                  f"Over {len(rows)} runs (every method, pair and seed above): mean target "
                  "accuracy (before AdaBN) at the epoch each rule keeps, and how often that "
                  "epoch is within 0.5 points of the best epoch in hindsight.", "",
                  "| rule | target accuracy | within 0.5 of the best |", "|---|---|---|",
                  f"| best epoch in hindsight (target labels) | {mean(best)} | 100% |",
                  f"| DEV (lowest) | {mean(dev)} | {100 * near(dev):.0f}% |",
                  f"| SND (highest) | {mean(snd_)} | {100 * near(snd_):.0f}% |",
                  f"| last epoch | {mean(last)} | {100 * near(last):.0f}% |"]
    grid = [r for r in runs if r.get("weight_grid")]
    if grid:
        lines += ["", "### Choosing the adaptation weight without target labels", "",
                  "Each weight a full fit; the criterion's value at the epoch it kept picks "
                  "(lowest DEV / highest SND), against the pick of the target labels.", "",
                  "| pair | method | seed | weights: target accuracy | DEV picks | SND picks | "
                  "labels pick |", "|---|---|---|---|---|---|---|"]
        agree = {"dev": 0, "snd": 0}
        groups = sorted({(r["pair"], r["method"], r["seed"]) for r in grid})
        for pair, method, seed in groups:
            # The grid's weights and the method's default weight (its plain run).
            cands = sorted((r for r in runs if (r["pair"], r["method"], r["seed"])
                            == (pair, method, seed)), key=lambda r: r["adaptation_weight"])
            by_labels = max(cands, key=lambda r: r["accuracy"])
            by_dev = min(cands, key=lambda r: _chosen(r["history"], "dev")["dev"])
            by_snd = max(cands, key=lambda r: _chosen(r["history"], "snd")["snd"])
            agree["dev"] += by_dev is by_labels
            agree["snd"] += by_snd is by_labels
            lines.append(f"| {pair.replace('-', '→')} | {LABELS[method]} | {seed} | " + ", ".join(
                f"{r['adaptation_weight']:g}: {100 * r['accuracy']:.1f}" for r in cands)
                + f" | {by_dev['adaptation_weight']:g} ({100 * by_dev['accuracy']:.1f}) | "
                f"{by_snd['adaptation_weight']:g} ({100 * by_snd['accuracy']:.1f}) | "
                f"{by_labels['adaptation_weight']:g} ({100 * by_labels['accuracy']:.1f}) |")
        lines.append(f"\nDEV picked what the labels would have picked in {agree['dev']} of "
                     f"{len(groups)} cases, SND in {agree['snd']}.")
    title = "## Deep domain adaptation on Office-31 (pretrained EfficientNet-Lite0)"
    if settings["trainable"]:
        title += f": the last {settings['trainable']} layer group(s) trained too"
    variant = settings.get("variant")
    if variant:
        title += f" — variant {variant}"
        lines.insert(1, f"Variant `--variant {variant}`: {apply_variant.__doc__.split(':', 1)[1]}"
                     .replace("\n    ", " ").strip() + "\n")
    write_section(f"domain-office31-t{settings['trainable']}" + (f"-{variant}" if variant else ""),
                  title + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
