"""`transferkit adapt` with a deep method on a pretrained backbone: the summary, the weight
chosen without target labels, and one-line errors for what cannot work."""

from __future__ import annotations

import json

import pytest

from builders import write_class_folder
from transferkit.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def folders(tmp_path):
    write_class_folder(tmp_path / "source", per_class=20, seed=0)  # 4 held out for DEV
    write_class_folder(tmp_path / "target", per_class=5, seed=1)
    return tmp_path


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_adapt_a_pretrained_backbone_and_choose_the_weight_without_labels(folders, capsys):
    out = folders / "run"
    summary = run_json(capsys, "adapt", "--source", str(folders / "source"),
                       "--target", str(folders / "target"),
                       "--target-test", str(folders / "target"), "--method", "dann",
                       "--trainable", "0", "--epochs", "2", "--adaptation-weight", "auto",
                       "--out", str(out))
    assert summary["backbone"] == "efficientnet_lite0" and summary["cut"] == "pooled"
    assert summary["trainable_groups"] == 0 and summary["criterion"] == "dev"
    grid = summary["weight_selection"]
    assert [row["adaptation_weight"] for row in grid] == [0.3, 1.0, 3.0]
    best = max(grid, key=lambda row: row["criterion"])
    # The criterion chose, and the method's row is that model's.
    assert summary["adaptation_weight"] == best["adaptation_weight"]
    assert summary["adapted_accuracy"] == best["target_accuracy"]
    assert len(summary["criterion_curve"]) == 2
    kept = [row for row in summary["criterion_curve"] if row.get("kept")]
    assert len(kept) == 1 and kept[0]["dev"] == min(r["dev"] for r in summary["criterion_curve"])
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "chosen without target labels" in report and "deep embedded validation" in report


def test_the_default_method_on_a_pretrained_backbone_is_shot_in_two_stages(folders, capsys):
    out = folders / "run"
    summary = run_json(capsys, "adapt", "--source", str(folders / "source"),
                       "--target", str(folders / "target"),  # 10 images: less than a batch
                       "--target-test", str(folders / "target"), "--epochs", "1",
                       "--out", str(out))
    assert summary["method"] == "shot" and summary["adaptation_weight"] == 0.3
    assert [row["stage"] for row in summary["criterion_curve"]] == ["source", "target"]
    assert [row["stage"] for row in summary["criterion_curve"] if row.get("kept")] == ["target"]
    assert summary["adapted_accuracy"] is not None
    assert (out / "train" / "shot" / "target" / "metrics.csv").is_file()
    # Stage 1 is the source-only baseline's network, not trained a second time.
    assert (out / "train" / "source-only" / "metrics.csv").is_file()
    assert not (out / "train" / "shot" / "source").exists()
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "SHOT&#x27;s target stage" in report or "SHOT's target stage" in report
    assert "the lowest among its target stage" in report  # not the source stage's epochs


@pytest.mark.parametrize("extra, message", [
    (["--method", "adda", "--backbone", "efficientnet_lite0"], "digit-cnn network only"),
    (["--method", "coral", "--trainable", "1"], "--trainable applies"),
    (["--method", "coral", "--backbone", "digit-cnn"], "shallow method"),
    (["--method", "dann", "--adaptation-weight", "-1"], "finite number >= 0"),
    (["--method", "dann", "--adaptation-weight", "lots"], "a number or 'auto'"),
    (["--method", "dann", "--backbone", "digit-cnn", "--adaptation-weight", "auto"],
     "needs a criterion"),
    (["--method", "dann", "--backbone", "no_such_network_xyz"], "no_such_network_xyz"),
])
def test_adapt_refuses_what_cannot_work_in_one_line(folders, capsys, extra, message):
    assert main(["adapt", "--source", str(folders / "source"), "--target",
                 str(folders / "target"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") <= 2


def test_a_reweighting_method_reports_the_distance_of_the_reweighted_source(folders, capsys):
    # Re-weighting moves no feature: an "after" distance that ignored the weights would
    # equal "before" to the last digit. Measured with the weights it must differ, and the
    # text output gives each distance with its 95% interval.
    summary = run_json(capsys, "adapt", "--source", str(folders / "source"),
                       "--target", str(folders / "target"), "--method", "reweight")
    before, after = summary["domain_separability_before"], summary["domain_separability_after"]
    assert summary["source_reweighted_after"] is True
    assert summary["a_distance_before"] == before["distance"]
    assert summary["a_distance_after"] == after["distance"]
    # Unequal weights shrink the source's effective size (Kish), so at least the interval moves.
    assert after["interval"] != before["interval"]
    for measured in (before, after):
        low, high = measured["interval"]
        assert 0.0 <= low <= measured["distance"] <= high <= 2.0
    assert main(["adapt", "--source", str(folders / "source"), "--target",
                 str(folders / "target"), "--method", "reweight", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "proxy A-distance source↔target (95% interval): " in text
    assert f"{before['distance']:.2f} [{before['interval'][0]:.2f}, " in text
    assert "(source re-weighted)" in text


def test_the_kept_epoch_is_the_last_stages_first_best():
    from transferkit.jobs.adapt import _kept_row

    curve = [{"epoch": 1, "stage": "source", "dev": 0.1, "snd": 9.0},
             {"epoch": 1, "stage": "target", "dev": 0.5, "snd": 1.0},
             {"epoch": 2, "stage": "target", "dev": float("nan"), "snd": 3.0},
             {"epoch": 3, "stage": "target", "dev": 0.3, "snd": 3.0},
             {"epoch": 4, "stage": "target", "dev": 0.3, "snd": 2.0}]
    assert _kept_row(curve, "dev") is curve[3]  # not the source stage's 0.1, not the NaN
    assert _kept_row(curve, "snd") is curve[2]  # the first of two equal best
    assert _kept_row(curve, "none") is None and _kept_row([], "dev") is None
