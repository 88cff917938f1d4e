"""`transferkit adapt`: folders in, the summary the issue asks for out, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from transferkit.cli import main
from transferkit.data.digits import DigitDomain, write_image_folder
from transferkit.methods.domain._deep_base import DeepSourceOnly

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bars_domain(n: int, seed: int, colour_shift: bool = False) -> DigitDomain:
    """Horizontal (0) and vertical (1) bars; the shifted domain has coloured backgrounds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i, label in enumerate(labels):
        background = rng.integers(0, 256, 3) if colour_shift else np.zeros(3, int)
        images[i] = background
        start, width = rng.integers(4, 24), rng.integers(3, 7)
        if label == 0:
            images[i, start:start + width, 4:28] = 255 - background
        else:
            images[i, 4:28, start:start + width] = 255 - background
    return DigitDomain("bars", images, labels.astype(np.int64), np.arange(n, dtype=np.int64) + 1000 * seed)


@pytest.fixture
def domains(tmp_path):
    write_image_folder(bars_domain(80, 0), tmp_path / "source")
    write_image_folder(bars_domain(60, 1, colour_shift=True), tmp_path / "target")
    write_image_folder(bars_domain(30, 2, colour_shift=True), tmp_path / "labelled")
    write_image_folder(bars_domain(40, 3, colour_shift=True), tmp_path / "test")
    return tmp_path


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


def test_adapt_writes_the_summary_with_every_number(domains, capsys):
    (domains / "target" / "0" / "broken.png").write_bytes(b"\x89PNG truncated")
    out = domains / "run"
    summary = run_json(capsys, "adapt", "--source", str(domains / "source"),
                       "--target", str(domains / "target"),
                       "--target-labelled", str(domains / "labelled"),
                       "--target-test", str(domains / "test"),
                       "--method", "dann", "--backbone", "digit-cnn", "--epochs", "2",
                       "--out", str(out))
    for key in ("source_only_accuracy", "adapted_accuracy", "oracle_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    gap = summary["oracle_accuracy"] - summary["source_only_accuracy"]
    if gap > 0:
        expected = (summary["adapted_accuracy"] - summary["source_only_accuracy"]) / gap
        assert summary["gap_closed"] == pytest.approx(expected)
    else:
        assert summary["gap_closed"] is None  # no gap to close
    assert -2.5 <= summary["a_distance_before"] <= 2.0 and -2.5 <= summary["a_distance_after"] <= 2.0
    assert summary["mmd_before"] > 0 and summary["mmd_after"] >= 0
    assert summary["n_source"] == 80 and summary["n_target"] == 60 and summary["n_target_test"] == 40
    assert summary["n_skipped"] == 1 and summary["skipped"][0]["path"].endswith("broken.png")
    assert not summary["labelled_target_used_by_method"]  # DANN is unsupervised
    assert json.loads((out / "summary.json").read_text())["method"] == "dann"
    assert Image.open(out / "domain_map.png").size[0] > 400
    assert (out / "train" / "dann" / "metrics.csv").is_file()

    # The HTML report: the three accuracies, the domain maps and one learning-curve figure
    # per trained network, all embedded; `transferkit report` renders the folder again.
    report = (out / "report.html").read_text(encoding="utf-8")
    assert summary["report"] == str(out / "report.html")
    for key in ("source_only_accuracy", "adapted_accuracy", "oracle_accuracy"):
        assert f"{100 * summary[key]:.1f}%" in report
    assert "Domain maps" in report and "broken.png" in report
    trained = sorted(p.parent.name for p in (out / "train").glob("*/metrics.csv"))
    assert trained == ["dann", "oracle", "source-only"]
    assert report.count('src="data:image/png;base64,') == 1 + len(trained)
    assert 'src="http' not in report and "<script" not in report
    (out / "report.html").unlink()
    assert main(["report", str(out), "--quiet"]) == 0
    assert (out / "report.html").read_text(encoding="utf-8") == report

    # The reported source-only accuracy is the source-only network's, reproducible alone.
    images = np.stack([np.asarray(Image.open(p)) for d in "01"
                       for p in sorted((domains / "source" / d).glob("*.png"))])
    labels = np.repeat([0, 1], [len(list((domains / "source" / d).glob("*.png"))) for d in "01"])
    test = np.stack([np.asarray(Image.open(p)) for d in "01"
                     for p in sorted((domains / "test" / d).glob("*.png"))])
    test_labels = np.repeat([0, 1], [len(list((domains / "test" / d).glob("*.png"))) for d in "01"])
    alone = DeepSourceOnly(epochs=2).fit(images, labels)
    assert summary["source_only_accuracy"] == pytest.approx(alone.score(test, test_labels))


def test_adapt_adda_measures_both_domains_in_its_aligned_code(domains, capsys):
    summary = run_json(capsys, "adapt", "--source", str(domains / "source"),
                       "--target", str(domains / "target"), "--target-test", str(domains / "test"),
                       "--method", "adda", "--epochs", "1", "--out", str(domains / "run"))
    assert 0.0 <= summary["adapted_accuracy"] <= 1.0
    assert summary["mmd_before"] > 0 and summary["mmd_after"] >= 0
    assert [p.name for p in sorted((domains / "run" / "train" / "adda").iterdir())
            if p.is_dir()] == ["adapt", "source"]
    report = (domains / "run" / "report.html").read_text(encoding="utf-8")
    assert "Learning curves: adda/adapt" in report and "discriminator" in report


def test_adapt_semi_supervised_method_uses_the_labelled_target(domains, capsys):
    summary = run_json(capsys, "adapt", "--source", str(domains / "source"),
                       "--target", str(domains / "target"),
                       "--target-labelled", str(domains / "labelled"),
                       "--method", "domain-confusion", "--epochs", "2")
    assert summary["labelled_target_used_by_method"]
    assert summary["adapted_accuracy"] is None and summary["gap_closed"] is None  # no test set


@pytest.mark.parametrize("setup, message", [
    (lambda root: (root / "one" / "a").mkdir(parents=True), "at least two classes"),
    (lambda root: None, "--source and --target"),
])
def test_adapt_bad_input_gives_one_line_error(domains, capsys, setup, message):
    setup(domains)
    argv = ["adapt", "--target", str(domains / "target")]
    if message != "--source and --target":
        (domains / "one" / "a" / "x.png").parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32)).save(domains / "one" / "a" / "x.png")
        argv += ["--source", str(domains / "one")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_adapt_refuses_an_empty_target_and_unknown_target_classes(domains, capsys):
    (domains / "empty").mkdir()
    assert main(["adapt", "--source", str(domains / "source"), "--target",
                 str(domains / "empty")]) == 2
    assert "no target images" in capsys.readouterr().err
    write_image_folder(bars_domain(4, 5), domains / "other")
    (domains / "other" / "1").rename(domains / "other" / "7")
    assert main(["adapt", "--source", str(domains / "source"), "--target", str(domains / "target"),
                 "--target-test", str(domains / "other")]) == 2
    assert "do not exist in the training data" in capsys.readouterr().err


def test_adapt_demo_runs_embedded(tmp_path, capsys):
    summary = run_json(capsys, "adapt", "--demo", "printed-to-handwritten", "--epochs", "1",
                       "--out", str(tmp_path / "demo"))
    assert summary["n_source"] == 2000 and summary["n_target"] == 898
    assert "failure case" in summary["demo"]  # and says why
    assert summary["oracle_accuracy"] is not None and summary["gap_closed"] is not None
    assert (tmp_path / "demo" / "run" / "domain_map.png").is_file()
    assert "printed digits" in (tmp_path / "demo" / "run" / "report.html").read_text(encoding="utf-8")
