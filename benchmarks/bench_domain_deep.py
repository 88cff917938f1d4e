"""Deep domain adaptation on digit domains: the lectures' (Ganin & Lempitsky's) table.

Same pairs and pools as ``bench_domain_shallow.py`` (``build_pairs``: MNIST 0–4999 →
MNIST-M ≥ 5000, MNIST → USPS, USPS → MNIST, printed → MNIST; the adaptation pool's labels
only train the oracle, scoring is on a disjoint held-out target part), 32×32 RGB, and
the network of Ganin & Lempitsky's MNIST experiments trained by the project's one loop.
Rows: source only, DANN, DAN (multi-kernel MMD), Deep CORAL, target oracle (same network
trained on the labelled adaptation pool). Cells: target accuracy mean ± sd over seeds and
the share of the source-only → oracle gap closed. Writes the ``domain-deep`` section of
benchmarks/RESULTS.md after every run, so a run cut short keeps what it measured.

    .venv/bin/python benchmarks/bench_domain_deep.py --pairs "MNIST → MNIST-M" --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domain_shallow import DATASETS, RESULTS, build_pairs  # noqa: E402

from transferkit.data.digits import resize_domain  # noqa: E402
from transferkit.evaluate.domain import gap_closed  # noqa: E402
from transferkit.methods.dann import DANN  # noqa: E402
from transferkit.methods.deep_adaptation import DeepSourceOnly  # noqa: E402
from transferkit.methods.deep_coral import DeepCORAL  # noqa: E402
from transferkit.methods.mmd import DAN  # noqa: E402

START, END = "<!-- domain-deep:start -->", "<!-- domain-deep:end -->"
METHODS = {"source only": DeepSourceOnly, "DANN": DANN, "DAN (MK-MMD)": DAN,
           "Deep CORAL": DeepCORAL}


def write_section(section: str) -> None:
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Benchmark results\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text, encoding="utf-8")


def render(args, scores: dict, seconds: dict, elapsed: float) -> str:
    load = os.getloadavg()[0]
    lines = [START, "## Deep domain adaptation on digits (Ganin & Lempitsky's MNIST network)", "",
             f"`benchmarks/bench_domain_deep.py --epochs {args.epochs} --seeds "
             f"{' '.join(map(str, args.seeds))} --n-source {args.n_source} --n-target "
             f"{args.n_target} --n-test {args.n_test}`; pools as in the shallow table above "
             "(disjoint MNIST indices; MNIST-M from index ≥ 5000). Each seed seeds the "
             "network, the batches and the target pairing; AdamW lr 1e-3, warm-up + cosine, "
             f"batches of 64 source + 64 target images, fp32 on the CPU. {elapsed:.0f} s in all, "
             f"load average {load:.1f} at the last write (the machine was shared).", "",
             "| pair | method | target accuracy | gap closed | fit s (mean) |", "|---|---|---|---|---|"]
    for pair, by_method in scores.items():
        base = np.mean(by_method.get("source only", [np.nan]))
        oracle = np.mean(by_method.get("target oracle", [np.nan]))
        for method, values in by_method.items():
            closed = ""
            if method not in ("source only", "target oracle") and values:
                closed = f"{100 * gap_closed(base, float(np.mean(values)), oracle):+.0f}%"
            sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
            lines.append(f"| {pair} | {method} | {np.mean(values):.3f} ± {sd:.3f} (n={len(values)}) | "
                         f"{closed} | {np.mean(seconds[pair][method]):.0f} |")
    lines += ["", "Gap closed = (method − source only) / (oracle − source only). For reference, "
              "Ganin & Lempitsky report 0.5749 → 0.8149 on MNIST → MNIST-M (oracle 0.9891)."]
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["MNIST → MNIST-M"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS) + ["target oracle"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-source", type=int, default=5000)
    parser.add_argument("--n-target", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=2000)
    args = parser.parse_args(argv)
    if not DATASETS.is_dir():
        print(f"skipped: {DATASETS} is absent")
        return 0
    started = time.perf_counter()
    pairs = build_pairs(DATASETS, args.n_source, args.n_target, args.n_test)
    scores, seconds = {}, {}
    for pair in args.pairs:
        source, adapt, test = (resize_domain(d, 32, rgb=True) for d in pairs[pair])
        scores[pair], seconds[pair] = {}, {}
        for seed in args.seeds:
            for method in args.methods:
                t0 = time.perf_counter()
                if method == "target oracle":
                    model = DeepSourceOnly(epochs=args.epochs, random_state=seed)
                    model.fit(adapt.images, adapt.labels)
                else:
                    model = METHODS[method](epochs=args.epochs, random_state=seed)
                    model.fit(source.images, source.labels, adapt.images)
                accuracy = float(model.score(test.images, test.labels))
                scores[pair].setdefault(method, []).append(accuracy)
                seconds[pair].setdefault(method, []).append(time.perf_counter() - t0)
                print(f"[{pair}] seed {seed} {method}: {accuracy:.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
                write_section(render(args, scores, seconds, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
