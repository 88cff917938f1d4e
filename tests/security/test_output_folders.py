"""A command never deletes or overwrites what it did not write (issue items 2 and 15).

Regression tests for: ``fit --out`` replacing whatever folder it was given (the data
folder, its parent with the user's code, an unrelated folder, a file); an existing model
replaced with the user's extra files in it deleted; ``--out .`` crashing after training;
model folders created 0700 whatever the umask; the same holes in every command that
writes a folder or a file. And, from a hostile audit: a marker or config.json listing the
user's files as transferkit's; links at output names (report.html, layers.csv, the work
folder, checkpoint folders, plots) written through; a project's own config.json taken for
a saved model; images a CSV lists inside the output; a failed run leaving a marked, empty
folder behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from transferkit import run
from transferkit.bundle import load_bundle, save_bundle
from transferkit.cli import main
from transferkit.errors import TransferkitError
from transferkit.outputs import LAYOUTS, MARKER, WORK_FOLDER, check_output_file, prepare_output_folder

USER_FILES = {"notes.txt": b"my notes\n", "code/train.py": b"print('mine')\n"}


class _WorkStarted(AssertionError):
    """Raised by the slow part of a job: the output check must refuse before it."""


def _explode(*args, **kwargs):
    raise _WorkStarted("the job started working before checking its output path")


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``: file bytes, link targets, folders."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = ("link", os.readlink(path))
        elif path.is_file():
            entries[key] = path.read_bytes()
        else:
            entries[key] = "folder"
    return entries


def user_folder(root: Path) -> Path:
    for name, content in USER_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


def refused(capsys, argv) -> str:
    """Run the CLI, expect exit status 2 and one ``error:`` line; return that line."""
    code = main([*argv, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"exit status {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return ["--weights", str(path), "--arch", arch]


@pytest.fixture
def no_training(monkeypatch):
    from transferkit.methods.linear_probe import LinearProbe

    monkeypatch.setattr(LinearProbe, "fit", _explode)


# -- fit: the data folder, its parent, an unrelated folder, a file ----------------------------

@pytest.mark.parametrize("where", ["data", "parent", "inside data", "unrelated", "link to data"])
def test_fit_refuses_an_out_that_would_touch_the_users_files_before_training(
        where, image_folder, tmp_path, tiny, capsys, no_training):
    project = user_folder(tmp_path)  # code and notes beside the images (tmp_path/images)
    unrelated = user_folder(tmp_path / "elsewhere")
    (tmp_path / "data-link").symlink_to(image_folder, target_is_directory=True)
    out = {"data": image_folder, "parent": project, "inside data": image_folder / "model",
           "unrelated": unrelated, "link to data": tmp_path / "data-link"}[where]
    before = snapshot(tmp_path)
    line = refused(capsys, ["fit", str(image_folder), "--out", str(out), *tiny])
    assert snapshot(tmp_path) == before
    assert "input" in line or "not written by transferkit" in line


@pytest.mark.parametrize("kind", ["file", "link to a file"])
def test_fit_refuses_an_existing_file_as_out(kind, image_folder, tmp_path, tiny, capsys,
                                             no_training):
    (tmp_path / "notes.txt").write_bytes(b"precious\n")
    out = tmp_path / "notes.txt"
    if kind == "link to a file":
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "notes.txt")
    before = snapshot(tmp_path)
    line = refused(capsys, ["fit", str(image_folder), "--out", str(out), *tiny])
    assert "not a folder" in line
    assert snapshot(tmp_path) == before


def test_an_existing_model_is_replaced_only_with_overwrite_and_the_users_files_are_kept(
        image_folder, tmp_path, tiny, capsys):
    out = tmp_path / "model"
    assert main(["fit", str(image_folder), "--out", str(out), *tiny, "--quiet"]) == 0
    user_folder(out)
    before = snapshot(out)

    line = refused(capsys, ["fit", str(image_folder), "--out", str(out), *tiny,
                            "--classifier", "knn"])
    assert "--overwrite" in line
    assert snapshot(out) == before

    assert main(["fit", str(image_folder), "--out", str(out), *tiny, "--classifier", "knn",
                 "--overwrite", "--quiet"]) == 0
    for name, content in USER_FILES.items():
        assert (out / name).read_bytes() == content
    assert json.loads((out / "config.json").read_text())["params"]["classifier"] == "knn"
    assert load_bundle(out).classifier == "knn"
    assert (out / "report.html").is_file()
    leftovers = [p.name for p in [*out.iterdir(), *tmp_path.iterdir()]
                 if p.name.startswith(".") and p.name != MARKER]
    assert leftovers == []


# -- --out . -------------------------------------------------------------------------------

def test_out_dot_in_an_empty_working_folder_writes_the_model_there(image_folder, tmp_path, tiny,
                                                                   monkeypatch):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    assert main(["fit", str(image_folder), "--out", ".", *tiny, "--quiet"]) == 0
    assert Path.cwd() == here and Path(os.getcwd()).is_dir()  # the folder was not swapped away
    assert (here / "config.json").is_file() and (here / "report.html").is_file()
    assert load_bundle(here).classes_.tolist() == ["blue", "red"]


def test_out_dot_where_the_data_lies_is_refused_before_training(image_folder, tmp_path, tiny,
                                                                monkeypatch, capsys, no_training):
    user_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    line = refused(capsys, ["fit", "images", "--out", ".", *tiny])
    assert "input" in line
    assert snapshot(tmp_path) == before


# -- permissions ---------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_model_folders_and_files_follow_the_umask(image_folder, tmp_path, tiny, umask_022):
    out = tmp_path / "new" / "model"
    assert main(["fit", str(image_folder), "--out", str(out), *tiny, "--quiet"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for path in out.rglob("*"):
        expected = 0o755 if path.is_dir() else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


# -- save_bundle called directly ----------------------------------------------------------------

class TinySaved:
    """The least a bundle needs: a registered method name and artefacts (its weights, and
    ``extra`` when given: a file an older model wrote and a newer one does not)."""

    def __init__(self, extra: str | None = None):
        self.extra = extra

    def _save_artifacts(self, folder: Path) -> dict:
        for name in filter(None, ("weights.bin", self.extra)):
            (folder / name).write_bytes(b"\x00" * 8)
        return {"classes": ["a", "b"]}


@pytest.fixture(autouse=True)
def tiny_saved_is_registered(monkeypatch):
    from transferkit import bundle
    from transferkit.methods import registry

    spec = registry.MethodSpec("test-only", f"{TinySaved.__module__}:TinySaved", "classifier",
                               saves_bundle=True)
    monkeypatch.setitem(registry._REGISTRY, "test-only", spec)
    monkeypatch.setitem(bundle.METHOD_FILES, "test-only", ("weights.bin", "extra.bin"))


def test_save_bundle_refuses_a_folder_it_did_not_write(tmp_path):
    user_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    with pytest.raises(TransferkitError, match="not written by transferkit"):
        save_bundle(TinySaved(), tmp_path / "mine")
    assert snapshot(tmp_path) == before


def test_save_bundle_replaces_only_its_own_files(tmp_path):
    folder = save_bundle(TinySaved(extra="extra.bin"), tmp_path / "model")
    user_folder(folder)
    (tmp_path / "victim").write_bytes(b"outside\n")
    # A tampered marker cannot make a replace reach outside the folder.
    marker = json.loads((folder / MARKER).read_text())
    marker["files"] += ["../victim", str(tmp_path / "victim"), ".."]
    (folder / MARKER).write_text(json.dumps(marker))
    with pytest.raises(TransferkitError, match="--overwrite"):
        save_bundle(TinySaved(), folder)
    save_bundle(TinySaved(), folder, overwrite=True)
    names = {p.name for p in folder.iterdir()}
    assert names == {MARKER, "config.json", "metrics.json", "weights.bin", "notes.txt", "code"}
    assert (tmp_path / "victim").read_bytes() == b"outside\n"
    for name, content in USER_FILES.items():
        assert (folder / name).read_bytes() == content


def test_save_bundle_to_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_bundle(TinySaved(), ".")
    assert Path.cwd() == tmp_path and (tmp_path / "config.json").is_file()


def test_save_bundle_never_overwrites_a_users_file_of_the_same_name(tmp_path):
    folder = tmp_path / "model"
    prepare_output_folder(folder, command="fit")  # what fit does before training
    (folder / "weights.bin").write_bytes(b"the user's\n")
    with pytest.raises(TransferkitError, match="weights.bin"):
        save_bundle(TinySaved(), folder)
    assert (folder / "weights.bin").read_bytes() == b"the user's\n"


# -- interrupted runs resume, finished ones need overwrite --------------------------------------

def test_an_interrupted_run_resumes_and_a_finished_one_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    prepare_output_folder(out, command="adapt")
    checkpoint = out / "train" / "dann" / "latest.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("{}")
    prepare_output_folder(out, command="adapt")  # the rerun after an interrupt
    assert checkpoint.is_file()
    with pytest.raises(TransferkitError, match="unfinished `transferkit adapt`"):
        prepare_output_folder(out, command="autoencoder")

    (out / "summary.json").write_text("{}")
    user_folder(out)
    with pytest.raises(TransferkitError, match="--overwrite"):
        prepare_output_folder(out, command="adapt")
    # Files of the user's inside train/ (the help promises added files are kept): they
    # stay through --overwrite, with their folders; the training state goes.
    mine = out / "train" / "usernote.txt"
    mine.write_text("keep me")
    theirs = out / "train" / "dann" / "source" / "ckpt-0002"
    theirs.mkdir(parents=True)
    for name in ("model.safetensors", "state.pt", "progress.json"):
        (theirs / name).write_text("x")
    (theirs.parent / "metrics.csv").write_text("epoch\n1\n")
    (theirs.parent / ".metrics.csv.k2j3.tmp").write_text("epoch\n")  # an interrupted write
    (out / "train" / "dann" / "plot.png").write_bytes(b"mine too")
    own_table = out / "train" / "notes" / "metrics.csv"  # the loop's name, not in a run folder
    own_table.parent.mkdir()
    own_table.write_text("mine\n")
    prepare_output_folder(out, command="adapt", overwrite=True)
    # The new run starts over, not from the old checkpoints.
    assert not checkpoint.exists() and not (out / "train" / "dann" / "source").exists()
    assert mine.read_text() == "keep me"
    assert (out / "train" / "dann" / "plot.png").read_bytes() == b"mine too"
    assert own_table.read_text() == "mine\n"
    shutil.rmtree(out / "train")
    prepare_output_folder(out, command="adapt", overwrite=True)
    assert (out / "summary.json").is_file()  # replaced when the new run writes it
    for name, content in USER_FILES.items():
        assert (out / name).read_bytes() == content


# -- every other command that writes --------------------------------------------------------

@pytest.fixture
def teacher(image_folder, tmp_path, tiny_checkpoint) -> Path:
    path, arch = tiny_checkpoint
    run.fit(image_folder, tmp_path / "teacher", weights=str(path), arch=arch, report=False)
    return tmp_path / "teacher"


def _command(name: str, data: Path, out: Path, tiny: list[str], monkeypatch) -> list[str]:
    """argv of ``name`` writing to ``out``, with the job's slow part made to explode."""
    import transferkit.jobs.adapt as adapt
    import transferkit.jobs.autoencoder as autoencoder_job
    import transferkit.data.digits as digits
    import transferkit.data.embedded as embedded
    import transferkit.evaluate.layer_sweep as layer_sweep
    from transferkit.methods.anomaly import AnomalyDetector
    from transferkit.methods.fewshot.siamese import SiameseSimilarity

    if name == "adapt":
        monkeypatch.setattr(adapt._Representation, "__call__", _explode)
        return ["adapt", "--source", str(data), "--target", str(data / "red"), "--epochs", "1",
                "--out", str(out)]
    if name == "adapt --demo":
        monkeypatch.setattr(digits, "render_printed_digits", _explode)
        monkeypatch.setattr(digits, "handwritten_to_photo_blended", _explode)
        return ["adapt", "--demo", "--epochs", "1", "--out", str(out)]
    if name == "autoencoder":
        monkeypatch.setattr(autoencoder_job, "_read", _explode)
        return ["autoencoder", "--unlabelled", str(data), "--labelled", str(data), "--epochs", "1",
                "--out", str(out)]
    if name == "fewshot-train":
        monkeypatch.setattr(SiameseSimilarity, "fit", _explode)
        return ["fewshot-train", str(data), "--epochs", "1", "--out", str(out)]
    if name == "layers":
        monkeypatch.setattr(layer_sweep, "layer_sweep", _explode)
        return ["layers", str(data), *tiny, "--folds", "2", "--out", str(out)]
    if name == "anomaly":
        monkeypatch.setattr(AnomalyDetector, "fit", _explode)
        return ["anomaly", "--normal", str(data / "red"), "--test", str(data), *tiny,
                "--out", str(out)]
    if name == "demo":
        monkeypatch.setattr(embedded, "write_embedded_set", _explode)
        return ["demo", "--set", "textures", "--out", str(out)]
    raise AssertionError(name)


@pytest.mark.parametrize("name, where", [
    *[(name, where) for name in ("adapt", "autoencoder", "fewshot-train", "layers", "anomaly")
      for where in ("unrelated", "data")],
    ("adapt --demo", "unrelated"), ("demo", "unrelated")])
def test_every_command_refuses_a_folder_it_did_not_write(name, where, image_folder, tmp_path,
                                                         tiny, capsys, monkeypatch):
    out = user_folder(tmp_path / "elsewhere") if where == "unrelated" else image_folder
    argv = _command(name, image_folder, out, tiny, monkeypatch)
    before = snapshot(tmp_path)
    refused(capsys, argv)
    assert snapshot(tmp_path) == before


def test_distill_refuses_a_folder_it_did_not_write(teacher, image_folder, tmp_path, capsys,
                                                   monkeypatch):
    import transferkit.jobs.distill as distill_job

    monkeypatch.setattr(distill_job, "teacher_logits", _explode)
    for out in (user_folder(tmp_path / "elsewhere"), teacher, image_folder):
        before = snapshot(tmp_path)
        refused(capsys, ["distill", "--teacher", str(teacher), "--data", str(image_folder),
                         "--epochs", "1", "--out", str(out)])
        assert snapshot(tmp_path) == before


def test_anomaly_replaces_only_its_own_json_file_and_only_with_overwrite(image_folder, tmp_path,
                                                                        tiny, capsys):
    argv = ["anomaly", "--normal", str(image_folder / "red"), "--test", str(image_folder), *tiny]
    (tmp_path / "scores.json").write_bytes(b'{"mine": true}\n')
    before = snapshot(tmp_path)
    refused(capsys, [*argv, "--out", str(tmp_path / "scores.json"), "--overwrite"])
    assert snapshot(tmp_path) == before

    own = tmp_path / "result.json"
    assert main([*argv, "--out", str(own), "--quiet"]) == 0
    line = refused(capsys, [*argv, "--out", str(own)])
    assert "--overwrite" in line
    assert main([*argv, "--out", str(own), "--overwrite", "--quiet"]) == 0
    assert json.loads(own.read_text())["n_test"] > 0


def test_report_overwrites_only_a_report_transferkit_wrote(teacher, tmp_path, capsys):
    user_folder(tmp_path)
    before = snapshot(tmp_path)
    line = refused(capsys, ["report", str(teacher), "--out", str(tmp_path / "notes.txt")])
    assert "not written by transferkit" in line
    assert snapshot(tmp_path) == before
    # Its own reports it regenerates: the default one in the run folder and one given by --out.
    given = ["--out", str(tmp_path / "r.html")]
    for argv in (["report", str(teacher)], ["report", str(teacher), *given],
                 ["report", str(teacher), *given]):
        assert main([*argv, "--quiet"]) == 0
    assert (teacher / "report.html").is_file() and (tmp_path / "r.html").is_file()


# -- forged listings, links, look-alike folders, data listed by a CSV (hostile audit) -------

def _victim(tmp_path: Path) -> Path:
    """A folder of the user's outside the output, with a private file in it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_bytes(b"years of work\n")
    os.chmod(victim / "thesis.tex", 0o600)
    return victim


def snapshot_with_modes(root: Path) -> dict[str, object]:
    return {key: (value, stat.S_IMODE((root / key).lstat().st_mode))
            for key, value in snapshot(root).items()}


@pytest.mark.parametrize("listing", [MARKER, "config.json"])
def test_a_forged_file_list_cannot_make_overwrite_delete_the_users_files(listing, tmp_path):
    folder = save_bundle(TinySaved(), tmp_path / "model")
    saved = json.loads((folder / listing).read_text())
    # "data" is a name transferkit writes, but in a demo folder, never in a model's.
    saved["files"] += ["notes.txt", "my_results", "data"]
    (folder / listing).write_text(json.dumps(saved))
    user_folder(folder)
    for name in ("my_results/a.csv", "data/images.txt"):
        (folder / name).parent.mkdir()
        (folder / name).write_bytes(b"mine\n")
    save_bundle(TinySaved(), folder, overwrite=True)
    for name, content in [*USER_FILES.items(), ("my_results/a.csv", b"mine\n"),
                          ("data/images.txt", b"mine\n")]:
        assert (folder / name).read_bytes() == content


def test_report_never_writes_through_a_link_at_its_output(teacher, tmp_path, capsys):
    victim = _victim(tmp_path)
    other_report = tmp_path / "old-report.html"  # a report transferkit wrote, elsewhere
    assert main(["report", str(teacher), "--out", str(other_report), "--quiet"]) == 0
    (teacher / "report.html").unlink(missing_ok=True)
    (teacher / "report.html").symlink_to(victim / "thesis.tex")
    (tmp_path / "r.html").symlink_to(other_report)
    before = snapshot_with_modes(tmp_path)
    for argv in (["report", str(teacher)], ["report", str(teacher), "--out", str(tmp_path / "r.html")]):
        line = refused(capsys, argv)
        assert "link" in line
        assert snapshot_with_modes(tmp_path) == before


def test_a_single_output_file_that_is_a_link_is_refused(tmp_path):
    (tmp_path / "mine.json").write_text('{"created_by": "transferkit"}')
    (tmp_path / "out.json").symlink_to(tmp_path / "mine.json")
    with pytest.raises(TransferkitError, match="link"):
        check_output_file(tmp_path / "out.json", written_by_transferkit=lambda path: True,
                          overwrite=True)


@pytest.mark.parametrize("command, name", [
    *[(command, name) for command, layout in LAYOUTS.items() for name in layout.entries],
    ("fit", MARKER), ("fit", "metrics.csv")])
def test_a_link_where_a_command_writes_is_refused_before_anything_is_written(command, name,
                                                                             tmp_path):
    victim = _victim(tmp_path)
    out = tmp_path / "out"
    prepare_output_folder(out, command=command)
    if name == "metrics.csv":  # a model file, listed by the model's marker
        mark = json.loads((out / MARKER).read_text())
        (out / MARKER).write_text(json.dumps({**mark, "files": [*mark["files"], name]}))
    (out / name).unlink(missing_ok=True)
    (out / name).symlink_to(victim if "." not in name.lstrip(".") else victim / "thesis.tex")
    before = snapshot_with_modes(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(TransferkitError, match="link"):
            prepare_output_folder(out, command=command, overwrite=overwrite)
        assert snapshot_with_modes(tmp_path) == before


def test_fit_refuses_a_linked_work_folder_before_training(image_folder, tmp_path, tiny, capsys,
                                                          monkeypatch):
    from transferkit.methods.finetune import FineTuner

    monkeypatch.setattr(FineTuner, "fit", _explode)
    victim = _victim(tmp_path)
    (victim / "metrics.csv").write_bytes(b"epoch,loss\n")
    out = tmp_path / "X"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"created_by": "transferkit", "command": "fit",
                                          "files": [WORK_FOLDER]}))
    (out / WORK_FOLDER).symlink_to(victim, target_is_directory=True)
    before = snapshot_with_modes(tmp_path)
    line = refused(capsys, ["fit", str(image_folder), "--out", str(out), "--method", "finetune",
                            "--epochs", "1", *tiny])
    assert "link" in line
    assert snapshot_with_modes(tmp_path) == before


def test_checkpoints_are_never_written_into_a_linked_folder(tmp_path):
    import torch

    from transferkit.train.checkpoint import CheckpointDir

    victim = _victim(tmp_path)
    (tmp_path / "linked-run").symlink_to(victim, target_is_directory=True)
    real_run = tmp_path / "run"
    real_run.mkdir()
    (real_run / "ckpt-0001").symlink_to(victim, target_is_directory=True)
    (real_run / "final").symlink_to(victim, target_is_directory=True)
    before = snapshot_with_modes(tmp_path)
    weights = {"w": torch.zeros(2)}
    with pytest.raises(TransferkitError, match="link"):
        CheckpointDir(tmp_path / "linked-run").save(1, weights, None, False, {}, {"epoch": 1})
    with pytest.raises(TransferkitError, match="link"):
        CheckpointDir(real_run).save(1, weights, None, False, {}, {"epoch": 1})
    with pytest.raises(TransferkitError, match="link"):
        CheckpointDir(real_run).save_final(weights, {"epochs_run": 1})
    leftovers = {p.name for p in real_run.iterdir()} - {"ckpt-0001", "final"}
    assert leftovers == set()
    assert snapshot_with_modes(tmp_path) == before


def test_plots_replace_a_link_at_their_path_instead_of_writing_through_it(tmp_path, umask_022):
    import numpy as np

    from transferkit.report.curves import plot_learning_curves
    from transferkit.report.domain_map import plot_domain_maps

    victim = _victim(tmp_path)
    before = snapshot_with_modes(victim)
    history = [{"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.1 / epoch,
                "train_accuracy": 0.5, "val_accuracy": 0.5} for epoch in (1, 2)]
    features = np.random.default_rng(0).normal(size=(20, 4))
    writers = {"curves.png": lambda path: plot_learning_curves(history, path),
               "map.png": lambda path: plot_domain_maps({"before": (features, features + 1)}, path)}
    for name, write in writers.items():
        path = tmp_path / name
        path.symlink_to(victim / "thesis.tex")
        write(path)
        assert not path.is_symlink() and path.read_bytes().startswith(b"\x89PNG")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert snapshot_with_modes(victim) == before


@pytest.mark.parametrize("config", [{"format_version": 3, "method": "sgd"},
                                    {"format_version": 1, "method": "linear_probe"},
                                    {"format_version": True, "method": "linear_probe"}])
def test_a_folder_with_a_config_json_of_its_own_is_not_taken_for_a_saved_model(
        config, image_folder, tmp_path, tiny, capsys, no_training):
    project = user_folder(tmp_path / "proj")
    (project / "config.json").write_text(json.dumps(config))
    for name in ("metrics.json", "report.html", "train.py"):
        (project / name).write_bytes(b"the user's\n")
    if config["format_version"] is True:  # all a model has, but true is no format version
        (project / "classifier.skops").write_bytes(b"the user's\n")
    before = snapshot(tmp_path)
    for extra in ([], ["--overwrite"]):
        line = refused(capsys, ["fit", str(image_folder), "--out", str(project), *tiny, *extra])
        assert "not written by transferkit" in line
        assert snapshot(tmp_path) == before


def test_fit_never_writes_over_the_images_a_csv_lists(image_folder, tmp_path, tiny, capsys,
                                                      no_training):
    import shutil

    demo = tmp_path / "D"
    prepare_output_folder(demo, command="demo")
    shutil.copytree(image_folder, demo / "data")
    listing = tmp_path / "list.csv"
    rows = [f"{path},{path.parent.name}" for path in sorted((demo / "data").glob("*/*.png"))]
    listing.write_text("\n".join(["path,label", *rows]) + "\n")
    before = snapshot(tmp_path)
    line = refused(capsys, ["fit", str(listing), "--out", str(demo), *tiny, "--overwrite"])
    assert "input" in line
    assert snapshot(tmp_path) == before


def test_a_fit_refused_for_its_settings_creates_no_output_folder(image_folder, tmp_path, tiny,
                                                                 capsys):
    out = tmp_path / "new"
    line = refused(capsys, ["fit", str(image_folder), "--out", str(out), "--method", "finetune",
                            "--precision", "fp16", "--device", "cpu", *tiny])
    assert "fp16" in line
    assert not out.exists()


def test_a_fit_that_fails_removes_the_folder_it_created_and_only_that(image_folder, tmp_path,
                                                                      tiny, capsys, monkeypatch):
    from transferkit.errors import DataError
    from transferkit.methods.linear_probe import LinearProbe

    def fail(*args, **kwargs):
        raise DataError("the images said no.")

    monkeypatch.setattr(LinearProbe, "fit", fail)
    existing = tmp_path / "empty"
    existing.mkdir()
    for out in (tmp_path / "new", existing):
        refused(capsys, ["fit", str(image_folder), "--out", str(out), *tiny])
    assert not (tmp_path / "new").exists()
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_a_fit_whose_validation_images_are_all_unreadable_leaves_no_folder(image_folder,
                                                                           tmp_path, tiny, capsys):
    import shutil

    data = tmp_path / "split"
    shutil.copytree(image_folder, data / "train")
    for name in ("red", "blue"):
        (data / "val" / name).mkdir(parents=True)
        (data / "val" / name / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "model"
    # Which error this is belongs to test_hostile_inputs; here only what it leaves behind.
    with contextlib.suppress(Exception):
        main(["fit", str(data), "--out", str(out), *tiny, "--quiet"])
    assert not out.exists()
