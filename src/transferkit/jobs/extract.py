"""``transferkit extract``: frozen features of a whole data set, written as Parquet shards
(:mod:`transferkit.features.shards`) for ``transferkit fit --features``.

Two engines write the same store: ``local`` (this process: ONNX Runtime lanes on every
core, the feature cache) and ``ray`` (a Ray Data pipeline on an actor pool, on a local
Ray instance or an existing cluster; :mod:`transferkit.features.ray_engine`). A run that
is stopped resumes where it stopped: only shards not yet written are extracted.
"""

from __future__ import annotations

import time
from pathlib import Path

from transferkit.jobs import _options

NAME = "extract"
HELP = "extract frozen features of a data set into Parquet shards (local or Ray engine)"
ENGINES = ("local", "ray")


def add_arguments(parser) -> None:
    parser.add_argument("data", help="folder (class sub-folders, optionally train/ val/ "
                        "test/; or images without sub-folders: unlabelled) or CSV with "
                        "path,label columns")
    parser.add_argument("--out", required=True, help="features folder to write (new, empty, "
                        "or an unfinished extraction of the same settings, which resumes)")
    parser.add_argument("--engine", choices=ENGINES, help="local (default): this process; "
                        "ray: a Ray Data pipeline (pip install 'transferkit[ray]')")
    parser.add_argument("--address", help="ray: the cluster to join ('auto', or "
                        "ray://HOST:10001); default: start a local Ray instance")
    parser.add_argument("--actors", type=int, help="ray: actors holding the network (default "
                        "one per CPU of the local instance or cluster; one per GPU when the "
                        "cluster has GPUs)")
    _options.add_backbone(parser)
    parser.add_argument("--backbone-fuse", dest="fuse", metavar="BACKBONE", action="append",
                        help="another backbone whose features are concatenated (repeatable)")
    parser.add_argument("--layer", help="layer(s): a name, a comma-separated list, 'stages' "
                        "or 'all' (default pre_logits)")
    parser.add_argument("--pooling", choices=_options.POOLINGS, help="default avg")
    parser.add_argument("--normalise", choices=["l2"], help="store L2-normalised vectors")
    parser.add_argument("--shard-rows", type=int, help="images per shard (default 1024)")
    _options.add_cache(parser)


def run(data, out, engine: str = "local", address: str | None = None,
        actors: int | None = None, backbone: str | None = None, weights=None,
        arch: str | None = None, fuse=(), layer: str | None = None, pooling: str = "avg",
        normalise: str | None = None, cache_dir=None, use_cache: bool = True,
        progress: bool = False, shard_rows: int | None = None) -> dict:
    """Extract the features of every image of ``data`` into the store ``out``; returns
    the summary ``transferkit extract --json`` prints. ``shard_rows``: images per shard
    (default :data:`~transferkit.features.shards.SHARD_ROWS`)."""
    from transferkit.backbones.registry import DEFAULT_BACKBONE
    from transferkit.features.shards import data_listing
    from transferkit.train.distributed import is_main_process

    if not is_main_process():
        # Under torchrun every process runs the command: one extracts (with every core,
        # or with --engine ray on the cluster); the others would only redo its work.
        return {}
    if fuse:
        backbone = "+".join([backbone or DEFAULT_BACKBONE, *fuse])
    root, listing, classes = data_listing(data)
    return extract_listing(root, listing, out, classes=classes, data=str(data), engine=engine,
                           address=address, actors=actors, backbone=backbone, weights=weights,
                           arch=arch, layer=layer, pooling=pooling, normalise=normalise,
                           cache_dir=cache_dir, use_cache=use_cache, progress=progress,
                           shard_rows=shard_rows)


def extract_listing(root, listing, out, *, classes=None, data=None, engine: str = "local",
                    address: str | None = None, actors: int | None = None,
                    backbone: str | None = None, weights=None, arch: str | None = None,
                    layer: str | None = None, pooling: str = "avg", normalise: str | None = None,
                    cache_dir=None, use_cache: bool = True, progress: bool = False,
                    shard_rows: int | None = None) -> dict:
    """The engine part of :func:`run`, for a listing already made (``(path, label, split)``
    rows relative to ``root``): benchmarks call it to time each engine on one listing.
    The summary's ``images_per_second`` counts the images extracted in this run over the
    engine's time (for Ray, start-up of the instance and actors included; see
    ``startup_seconds``)."""
    from transferkit.errors import TransferkitError
    from transferkit.features.extract import build_extractor
    from transferkit.features.shards import SHARD_ROWS, FeatureStore, extractor_settings
    from transferkit.outputs import check_not_an_input, input_folders, resolve_output

    start = time.perf_counter()
    if engine not in ENGINES:
        raise TransferkitError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}.")
    if engine == "local" and (address is not None or actors is not None):
        raise TransferkitError("--address and --actors apply to --engine ray; drop them or add "
                               "--engine ray.")
    if actors is not None and actors < 1:
        raise TransferkitError(f"--actors must be at least 1, got {actors}.")
    folder = resolve_output(out)
    # The shards must never be listed as images of the data they describe. A CSV may list
    # images anywhere (absolute paths): the folders holding them are inputs too, as in fit.
    check_not_an_input(folder, [root, *input_folders([Path(root) / path
                                                      for path, _, _ in listing])], str(out))
    settings = extractor_settings(backbone, weights, arch, layer, pooling, normalise)
    network = {k: v for k, v in settings.items() if k != "normalise"}
    extractor = build_extractor(**network, cache_dir=cache_dir, use_cache=use_cache)
    layers, offset = {}, 0
    for name, width in extractor.dims.items():
        layers[name] = (offset, offset + width)
        offset += width
    store = FeatureStore.create(folder, identity=extractor.identity(), extractor=settings,
                                dim=extractor.dim, layers=layers, listing=listing,
                                classes=classes, data=data if data is not None else str(root),
                                # 0 is refused, not taken for the default
                                shard_rows=SHARD_ROWS if shard_rows is None else shard_rows)
    try:  # the store is locked for this run (one writer at a time)
        missing = store.missing()
        n_done_before = store.n_shards - len(missing)
        engine_start = time.perf_counter()
        startup = 0.0
        if not missing:
            n_extracted = 0
        elif engine == "local":
            from transferkit.features.shards import write_missing_shards

            n_extracted = write_missing_shards(store, extractor, root, normalise, progress)
        else:
            from transferkit.features.ray_engine import write_missing_shards_with_ray

            ray_run = write_missing_shards_with_ray(
                store, root, network, normalise=normalise, address=address, actors=actors,
                # A local instance shares this machine's cache folder (the ONNX export); cluster
                # nodes use their own default unless a folder was named.
                cache_dir=str(extractor_cache_root(extractor)) if cache_dir or not address else None,
                progress=progress)
            n_extracted, startup, actors = ray_run["images"], ray_run["startup_seconds"], ray_run["actors"]
        engine_seconds = time.perf_counter() - engine_start
        skipped_file = store.write_skipped_file()
        skipped = store.skipped()
    finally:
        store.release()
    summary = {
        "out": str(out), "engine": engine, "data": str(data if data is not None else root),
        "n_images": store.n_images, "n_shards": store.n_shards,
        "shards_written": len(missing), "shards_already_done": n_done_before,
        "images_extracted": n_extracted, "dim": store.dim,
        "n_skipped": len(skipped), "skipped": [{"path": p, "reason": r} for p, r in skipped],
        "skipped_file": None if skipped_file is None else str(skipped_file),
        "engine_seconds": engine_seconds,
        "images_per_second": n_extracted / engine_seconds if n_extracted else None,
        "seconds": time.perf_counter() - start,
    }
    if engine == "ray":
        summary.update({"address": address or "local", "actors": actors,
                        "startup_seconds": startup})
    return summary


def extractor_cache_root(extractor) -> Path:
    """The cache folder of a (possibly fused) extractor: where the ONNX export lives."""
    parts = getattr(extractor, "extractors", [extractor])
    return Path(parts[0].cache_root)


def render(summary: dict) -> str:
    rate = summary["images_per_second"]
    speed = f" at {rate:.1f} images/s" if rate else ""
    engine = summary["engine"]
    if engine == "ray":
        engine += f" ({summary['actors']} actors, {summary['address']})"
    lines = [f"{summary['n_images']} images in {summary['n_shards']} shards in {summary['out']}: "
             f"{summary['shards_written']} written, {summary['shards_already_done']} already done "
             f"({summary['images_extracted']} images extracted{speed}, engine {engine})."]
    if summary["n_skipped"]:
        lines.append(f"skipped {summary['n_skipped']} unreadable image(s), listed in "
                     f"{summary['skipped_file']}:")
        from transferkit.features.shards import escape_control  # a newline in a name

        lines += [f"  {escape_control(item['path'])}\t{escape_control(item['reason'])}"
                  for item in summary["skipped"][:10]]
        if summary["n_skipped"] > 10:
            lines.append(f"  ... and {summary['n_skipped'] - 10} more")
    return "\n".join(lines)
