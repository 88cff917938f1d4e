"""The jobs layer: one module per command with the same four parts, a parser that costs no
torch, options that reach run() by name, and render() text from real summaries."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from transferkit import jobs
from transferkit.cli import build_parser, main
from transferkit.errors import TransferkitError

JOBS_FOLDER = Path(jobs.__file__).parent


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("name", jobs.JOBS)
def test_every_job_has_a_name_a_help_line_arguments_run_and_render(name):
    job = jobs.load_job(name)
    assert job.NAME.replace("-", "_") == name
    assert job.HELP and "\n" not in job.HELP
    for part in ("add_arguments", "run", "render"):
        assert callable(getattr(job, part)), f"{name} lacks {part}()"
    assert jobs.load_job(job.NAME) is job


def test_every_command_of_the_parser_is_a_job():
    assert list(subparsers(build_parser())) == [jobs.load_job(n).NAME for n in jobs.JOBS]


def _estimator_parameters() -> set[str]:
    """What fit's **options can feed: the parameters of its methods' estimators."""
    from transferkit.methods import list_methods, method_class

    return {name for method in list_methods(family="classifier")
            for name in method_class(method)().get_params()}


@pytest.mark.parametrize("name", jobs.JOBS)
def test_every_option_feeds_a_keyword_of_run(name):
    job = jobs.load_job(name)
    parameters = inspect.signature(job.run).parameters
    accepted = set(parameters)
    if name == "fit":
        accepted |= _estimator_parameters()
    elif any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        accepted |= {"progress", "cache_dir", "use_cache"}  # passed on to the job they wrap
    command = subparsers(build_parser())[job.NAME]
    dests = {a.dest for a in command._actions} - {"help", "json", "quiet", "job"}
    assert dests <= accepted, f"{name}: options {dests - accepted} reach no keyword of run()"


def test_building_the_parser_imports_no_numpy_torch_or_sklearn():
    code = ("import sys, transferkit.cli; transferkit.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_job_imports_a_private_name_of_another_module():
    for path in JOBS_FOLDER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = getattr(node, "module", None) or ""
            if isinstance(node, ast.ImportFrom) and module.startswith("transferkit."):
                if module in ("transferkit.jobs._common", "transferkit.jobs._options"):
                    continue  # there to be shared by the jobs
                shared = ("_common", "_options") if module == "transferkit.jobs" else ()
                private = [a.name for a in node.names
                           if a.name.startswith("_") and a.name not in shared]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_the_compatibility_module_is_the_jobs():
    from transferkit import run
    from transferkit.jobs import anomaly, cdfg, evaluate, fit, predict

    assert (run.fit, run.predict, run.evaluate, run.anomaly, run.cdfg) == (
        fit.run, predict.run, evaluate.run, anomaly.run, cdfg.run)


# -- fit refuses what its method would ignore ----------------------------------------------

@pytest.mark.parametrize("argv, flag", [
    (["--method", "finetune", "--pooling", "max"], "--pooling"),
    (["--method", "finetune", "--normalise", "l2"], "--normalise"),
    (["--method", "linear_probe", "--epochs", "3"], "--epochs"),
    (["--method", "fne", "--layer", "blocks.2"], "--layer"),  # fne fixes its layers
])
def test_fit_refuses_an_option_its_method_does_not_take(image_folder, tmp_path, capsys, argv, flag):
    out = tmp_path / "model"
    assert main(["fit", str(image_folder), "--out", str(out), *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and flag in err and "\n" not in err
    assert not out.exists()


def test_fit_refuses_it_in_python_too(image_folder, tmp_path):
    from transferkit.jobs import fit

    with pytest.raises(TransferkitError, match="--classifier does not apply to --method finetune"):
        fit.run(image_folder, tmp_path / "model", method="finetune", classifier="svm")


# -- render() of real runs ----------------------------------------------------------------

@pytest.fixture
def tiny(tiny_checkpoint):
    path, arch = tiny_checkpoint
    return ["--weights", str(path), "--arch", arch]


def run_json(capsys, *argv) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_render_of_fit_and_predict_is_what_the_command_prints(image_folder, tmp_path, capsys,
                                                             tiny):
    from transferkit.jobs import fit, predict

    model = tmp_path / "model"
    summary = run_json(capsys, "fit", str(image_folder), "--out", str(model), "--no-report",
                       "--seed", "3", *tiny)
    text = fit.render(summary)
    assert isinstance(text, str) and f"saved model to {model}" in text
    assert "validation:" in text and "report:" not in text

    predicted = run_json(capsys, "predict", str(model), str(image_folder / "red"))
    text = predict.render(predicted)
    assert isinstance(text, str) and len(text.splitlines()) == 8
    assert main(["predict", str(model), str(image_folder / "red"), "--quiet"]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_backbones_prints_its_render_and_json(capsys):
    from transferkit.jobs import backbones

    listing = run_json(capsys, "backbones")
    assert main(["backbones"]) == 0
    assert capsys.readouterr().out == backbones.render(listing) + "\n"


def test_an_os_error_is_one_line_not_a_traceback(monkeypatch, capsys, tmp_path):
    import errno

    from transferkit.jobs import report

    def full_disk(**options):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "report.html"))

    monkeypatch.setattr(report, "run", full_disk)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device (") and err.count("\n") == 1
