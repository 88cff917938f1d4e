"""Serve benchmark: does batching images across concurrent requests raise throughput?

A linear probe on the bundled EfficientNet-Lite0 is fitted on ``--train-per-class``
hymenoptera training images per class and exported to ONNX; each form (the ``.onnx`` file,
the model folder) is served twice by ``transferkit serve`` subprocesses, one with
cross-request batching (the default) and one with ``--no-batching``. ``N`` client threads
(keep-alive HTTP connections) each send one hymenoptera validation photo per request as
the raw body, as fast as answers come, for ``--seconds``; throughput is images answered
per second, latency is per request. The two servers are measured in turn (A, B, B, A …,
``--repeats`` rounds each, both servers up all along, the idle one idle), and the ratio
batched / unbatched is taken per round, then its median: the shared machine's load moves
both alike. Writes the ``serve`` section of ``benchmarks/RESULTS.md``.

    .venv/bin/python -m benchmarks.bench_serve [--clients 1 8] [--seconds 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import http.client
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import (
    add_output_arguments,
    announce_machine,
    image_files,
    load_average,
    log,
    publish,
    require_dataset,
    transferkit_command,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_models(data: Path, work: Path, per_class: int) -> dict[str, Path]:
    """Fit a Lite0 linear probe on ``per_class`` training images per class; export it."""
    rows = []
    for folder in sorted((data / "train").iterdir()):
        rows += [(str(p), folder.name) for p in image_files(folder)[:per_class]]
    table = work / "train.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label"), *rows])
    env = {**os.environ, "TRANSFERKIT_CACHE_DIR": str(work / "cache")}
    for argv in (["fit", str(table), "--out", str(work / "model"), "--no-report"],
                 ["export", str(work / "model"), "--out", str(work / "model.onnx")]):
        log("transferkit " + " ".join(argv[:1]))
        subprocess.run(transferkit_command() + argv + ["--quiet"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    return {"onnx": work / "model.onnx", "bundle": work / "model"}


def onnx_batch_gain(model: Path, photos: list[Path], repeats: int) -> tuple[float, float, float]:
    """In one process, no HTTP: (ms per image run one at a time, ms per image in one batch
    of 8, median per-round ratio), interleaved: the most batching could gain."""
    from transferkit.serve.predictors import ExportedModel

    served = ExportedModel(model)
    rows = [served.prepare(path) for path in photos[:8]]
    alone, batched = [], []
    for _ in range(max(3, 2 * repeats)):
        start = time.perf_counter()
        for row in rows:
            served.predict_prepared([row])
        alone.append((time.perf_counter() - start) / len(rows))
        start = time.perf_counter()
        served.predict_prepared(rows)
        batched.append((time.perf_counter() - start) / len(rows))
    return (1000 * statistics.median(alone), 1000 * statistics.median(batched),
            statistics.median(a / b for a, b in zip(alone, batched)))


class Server:
    """A ``transferkit serve`` subprocess on a free localhost port."""

    def __init__(self, model: Path, batching: bool, cache: Path, wait_ms: float | None = None):
        self.port = free_port()
        extra = ["--batch-wait-ms", f"{wait_ms:g}"] if wait_ms is not None else []
        extra = extra if batching else ["--no-batching"]
        self.process = subprocess.Popen(
            transferkit_command() + ["serve", str(model), "--port", str(self.port), "--quiet",
                                     *extra],
            env={**os.environ, "TRANSFERKIT_CACHE_DIR": str(cache)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"transferkit serve {model} did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` threads sending one image per request for ``seconds``."""
    latencies: list[float] = []
    failures = []
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, i = [], offset
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += clients
            start = time.perf_counter()
            connection.request("POST", "/predict", body=body,
                               headers={"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            payload = response.read()
            if response.status != 200:
                failures.append(payload[:200])
                continue
            mine.append(time.perf_counter() - start)
        connection.close()
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]!r}")
    return {"images_per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "load": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per server")
    parser.add_argument("--batch-wait-ms", type=float, default=None,
                        help="--batch-wait-ms of the batched server (default: serve's own)")
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=["onnx", "bundle"],
                        choices=["onnx", "bundle"])
    add_output_arguments(parser)
    args = parser.parse_args()
    data = require_dataset("hymenoptera")
    machine = announce_machine()
    photos = [p for p in image_files(data / "val") if p.suffix.lower() in (".jpg", ".jpeg")][:64]
    bodies = [p.read_bytes() for p in photos]

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as work:
        work = Path(work)
        models = prepare_models(data, work, args.train_per_class)
        gain = onnx_batch_gain(models["onnx"], photos, args.repeats)
        log(f"ONNX Runtime alone {gain[0]:.1f} ms/image, in a batch of 8 {gain[1]:.1f} ms/image")
        for kind in args.kinds:
            servers = {mode: Server(models[kind], mode == "batched", work / "cache",
                                     args.batch_wait_ms)
                       for mode in ("unbatched", "batched")}
            try:
                for clients in args.clients:
                    load(servers["batched"].port, bodies, clients, 2.0)  # warm both up
                    load(servers["unbatched"].port, bodies, clients, 2.0)
                    runs = {"unbatched": [], "batched": []}
                    for round_ in range(args.repeats):
                        # A, B then B, A: neither server is always measured first.
                        order = ("unbatched", "batched")
                        for mode in order if round_ % 2 == 0 else order[::-1]:
                            runs[mode].append(load(servers[mode].port, bodies, clients,
                                                   args.seconds))
                            log(f"{kind} clients={clients} round {round_} {mode}: "
                                f"{runs[mode][-1]['images_per_s']:.1f} img/s "
                                f"(load {runs[mode][-1]['load']:.1f})")
                    rows.append((kind, clients, runs))
            finally:
                for server in servers.values():
                    server.stop()

    def median(runs, key):
        return statistics.median(run[key] for run in runs)

    lines = [
        "### Serving: cross-request batching (`transferkit serve`)",
        "",
        f"Machine: {machine}",
        "",
        f"`.venv/bin/python -m benchmarks.bench_serve --clients {' '.join(map(str, args.clients))} "
        f"--seconds {args.seconds:g} --repeats {args.repeats}"
        + (f" --batch-wait-ms {args.batch_wait_ms:g}" if args.batch_wait_ms is not None else "")
        + "`: Lite0 linear probe "
        f"(hymenoptera, {args.train_per_class} training images per class), one JPEG photo per "
        "request as the raw body, N keep-alive clients on the same machine; the two servers "
        "measured in turn (A, B, B, A, …); ratio = median over rounds of batched / unbatched "
        "throughput in the same round.",
        "",
        "| model | clients | unbatched img/s | batched img/s | ratio batched/unbatched "
        "| p50 latency unbatched / batched (ms) | load average |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, clients, runs in rows:
        ratios = [b["images_per_s"] / u["images_per_s"]
                  for u, b in zip(runs["unbatched"], runs["batched"])]
        loads = [run["load"] for mode in runs.values() for run in mode]
        lines.append(
            f"| {kind} | {clients} | {median(runs['unbatched'], 'images_per_s'):.1f} "
            f"| {median(runs['batched'], 'images_per_s'):.1f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f}) | "
            f"{median(runs['unbatched'], 'p50_ms'):.0f} / {median(runs['batched'], 'p50_ms'):.0f} "
            f"| {min(loads):.1f}–{max(loads):.1f} |")
    lines += ["", f"Upper bound, in one process without HTTP: ONNX Runtime takes {gain[0]:.1f} ms "
              f"per image run alone and {gain[1]:.1f} ms per image in one batch of 8 (ratio "
              f"{gain[2]:.2f}, load average {load_average():.1f})."]
    publish("serve", "\n".join(lines), args)


if __name__ == "__main__":
    main()
