"""What a command imports when every feature it needs is cached: no network library.

A warm ``fit`` (every image's features in the cache) trains a scikit-learn classifier
and writes a bundle, and ``predict`` on cached images loads it and applies it; neither
needs PyTorch or timm, whose imports cost seconds, nor skops (the default classifier is
saved as numbers, :mod:`transferkit.features.linear_head`). The
command runs in a fresh interpreter that reports the modules it ended with, so a stray
top-level ``import torch`` anywhere on the path fails here (not a timed assert).
"""

from __future__ import annotations

import json
import subprocess
import sys

from builders import write_class_folder

HEAVY = ("torch", "timm", "torchvision", "skops")

# Runs the CLI, then prints which heavy top-level packages ended up in sys.modules.
_RUN_AND_LIST = """
import json, sys
from transferkit.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted({name.split('.')[0] for name in sys.modules} & set(%r))
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
""" % (HEAVY,)


def _run(args, cache) -> dict:
    result = subprocess.run([sys.executable, "-c", _RUN_AND_LIST, *args], capture_output=True,
                            text=True, env={**_env(), "TRANSFERKIT_CACHE_DIR": str(cache)})
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), result.stderr
    return report


def _env() -> dict:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_warm_fit_imports_no_network_library(tmp_path, tiny_checkpoint, isolated_cache):
    path, arch = tiny_checkpoint
    data = write_class_folder(tmp_path / "images", per_class=6)
    model = ["--weights", str(path), "--arch", arch]
    cold = _run(["fit", str(data), "--out", str(tmp_path / "cold"), "--quiet", *model],
                isolated_cache)
    assert "torch" in cold["heavy"]  # the cold run did run the network: the probe sees imports
    warm = _run(["fit", str(data), "--out", str(tmp_path / "warm"), "--quiet", *model],
                isolated_cache)
    assert warm["heavy"] == []
    assert (tmp_path / "warm" / "classifier.safetensors").is_file()
    # Predicting images whose features are cached loads the model without the network.
    predicted = _run(["predict", str(tmp_path / "warm"), str(data), "--json"], isolated_cache)
    assert predicted["heavy"] == []
