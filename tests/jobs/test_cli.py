"""The command line: fit → predict → evaluate, --json output, clear errors, the demo."""

import json
import subprocess
import sys

import pytest

from builders import REPO, write_class_folder
from transferkit.cli import main


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "--json must print exactly one JSON object"
    return json.loads(out)


@pytest.fixture
def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return ["--weights", str(path), "--arch", arch]


def test_fit_predict_evaluate(tmp_path, capsys, tiny, monkeypatch):
    data = write_class_folder(tmp_path / "data", per_class=10, classes=("red", "blue", "green"))
    (data / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    out = tmp_path / "model"
    fit = run_json(capsys, "fit", str(data), "--out", str(out), *tiny)
    for key in ("val_accuracy", "val_balanced_accuracy", "n_train", "n_val", "n_skipped",
                "seconds", "extract_seconds"):
        assert key in fit
    assert fit["n_skipped"] == 1 and fit["skipped"][0]["path"].endswith("corrupt.jpg")
    assert fit["n_train"] + fit["n_val"] == 30
    assert fit["val_accuracy"] >= 0.8
    assert (out / "config.json").exists() and (out / "metrics.json").exists()

    new = write_class_folder(tmp_path / "new", per_class=3, classes=("red", "blue"), seed=9)
    predicted = run_json(capsys, "predict", str(out), str(new))
    assert len(predicted["predictions"]) == 6
    for item in predicted["predictions"]:
        assert item["label"] == item["path"].split("/")[-2]
        assert abs(sum(item["probabilities"].values()) - 1) < 1e-6

    scored = run_json(capsys, "evaluate", str(out), str(new), "--cache-dir", str(tmp_path / "c2"))
    assert (tmp_path / "c2" / "features").is_dir()
    assert scored["accuracy"] == 1.0 and scored["balanced_accuracy"] == 1.0
    assert scored["confusion_matrix"]["labels"] == ["blue", "green", "red"]

    # Predicting images seen in fit runs no network: the cache answers.
    import transferkit.features.runtime as runtime

    def no_network(*args, **kwargs):
        raise AssertionError("a forward pass was attempted on cached images")

    monkeypatch.setattr(runtime, "make_runtime", no_network)
    seen = [str(p) for p in sorted((data / "blue").glob("*.png"))]
    again = run_json(capsys, "predict", str(out), *seen)
    assert {item["label"] for item in again["predictions"]} == {"blue"}

    # Human-readable output names the result and the saved model.
    assert main(["evaluate", str(out), str(new)]) == 0
    assert "balanced accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("setup, message", [
    (lambda root: write_class_folder(root, per_class=4, classes=("red",)), "only one class"),
    (lambda root: root.mkdir(), "no class sub-folders"),
    (lambda root: None, "no such file"),
])
def test_bad_data_gives_one_line_error(tmp_path, capsys, tiny, setup, message):
    setup(tmp_path / "data")
    code = main(["fit", str(tmp_path / "data"), "--out", str(tmp_path / "m"), *tiny])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_predict_with_a_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["predict", str(tmp_path / "x"), str(tmp_path)]) == 2
    assert "not a transferkit model folder" in capsys.readouterr().err


def test_backbones_lists_the_bundled_ones(capsys):
    listing = run_json(capsys, "backbones")
    assert [b["name"] for b in listing["bundled"]][:3] == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "transferkit", "--version"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "transferkit" in result.stdout


def test_demo_beats_raw_pixels(tmp_path, capsys):
    result = run_json(capsys, "demo", "--out", str(tmp_path / "demo"), "--set", "textures")
    textures = result["textures"]
    assert textures["val_accuracy"] > textures["raw_pixels_val_accuracy"]
    assert textures["val_accuracy"] >= 0.9
    assert (tmp_path / "demo" / "models" / "textures" / "config.json").exists()


def test_fit_finetune_writes_a_bundle_with_learning_curves(tmp_path, capsys, tiny):
    data = write_class_folder(tmp_path / "data", per_class=12)
    (data / "blue" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "tuned"
    fit = run_json(capsys, "fit", str(data), "--out", str(out), "--method", "finetune", *tiny,
                   "--strategy", "full", "--epochs", "8", "--image-size", "48", "--lr-factor", "1",
                   "--batch-size", "8", "--lr", "3e-3")
    for key in ("val_accuracy", "val_balanced_accuracy", "n_train", "n_val", "n_skipped",
                "seconds", "extract_seconds", "epochs_run", "best_epoch"):
        assert key in fit
    assert 1 <= fit["best_epoch"] <= fit["epochs_run"] <= 8
    assert fit["n_skipped"] == 1 and fit["skipped"][0]["path"].endswith("truncated.png")
    assert (out / "learning_curves.png").stat().st_size > 0
    assert (out / "metrics.csv").read_text().count("\n") == fit["epochs_run"] + 1

    new = write_class_folder(tmp_path / "new", per_class=3, seed=9)
    (new / "red" / "empty.jpg").write_bytes(b"")
    predicted = run_json(capsys, "predict", str(out), str(new))
    assert len(predicted["predictions"]) == 6 and predicted["n_skipped"] == 1
    scored = run_json(capsys, "evaluate", str(out), str(new))
    assert scored["n"] == 6 and scored["accuracy"] >= 5 / 6


@pytest.mark.parametrize("as_json", [True, False])
def test_a_reader_that_leaves_early_gets_no_traceback(as_json):
    # `transferkit ... | head`: the pipe closes before the summary is written.
    command = [sys.executable, "-m", "transferkit", "backbones", *(["--json"] if as_json else [])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=120) == 141, err
    assert b"Traceback" not in err and b"Error" not in err


def test_a_closed_stdout_gets_no_traceback(tmp_path):
    # `transferkit ... >&-`: Python then has no sys.stdout at all.
    done = subprocess.run(["bash", "-c", f"{sys.executable} -m transferkit backbones >&-"],
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
