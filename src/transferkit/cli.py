"""The ``transferkit`` command line: a loop over :mod:`transferkit.jobs`.

Each job adds its options, ``run()`` does the work and ``render()`` says what it did.
``--json`` prints exactly one JSON object on stdout instead (progress and warnings go to
stderr); ``--quiet`` silences progress bars and warnings. Errors a user can fix are
printed as one line, ``error: ...``, with exit status 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import warnings

from transferkit import __version__
from transferkit.errors import TransferkitError
from transferkit.jobs import JOBS, load_job
from transferkit.jobs._options import add_output_format
from transferkit.train.distributed import is_main_process


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transferkit", description="Transfer learning for "
                                     "image classification with pretrained networks.")
    parser.add_argument("--version", action="version", version=f"transferkit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in JOBS:
        job = load_job(name)
        # SUPPRESS: an option left out is not passed, so run()'s own default applies.
        command = commands.add_parser(job.NAME, help=job.HELP,
                                      argument_default=argparse.SUPPRESS)
        job.add_arguments(command)
        add_output_format(command)
        command.set_defaults(job=job)
    return parser


def _takes_progress(run) -> bool:
    parameters = inspect.signature(run).parameters
    return "progress" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                           for p in parameters.values())


def _seconds_since_process_start() -> float:
    import time

    try:
        import psutil

        return time.time() - psutil.Process().create_time()
    except Exception:  # psutil missing or /proc unreadable: the job's own clock stands
        return 0.0


def main(argv=None) -> int:
    # A file name that is not valid UTF-8 (surrogates) or a character the terminal's
    # encoding lacks must not crash the output after the work is done.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    options = vars(build_parser().parse_args(argv))
    job = options.pop("job")
    del options["command"]
    as_json, quiet = options.pop("json"), options.pop("quiet")
    # Under torchrun / accelerate launch every process runs this command; the main one
    # shows progress and prints the summary, the others only their errors.
    worker = not is_main_process()
    quiet = quiet or worker
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    if quiet:
        warnings.simplefilter("ignore")
    else:
        warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}",
                                                                  file=sys.stderr)
    if _takes_progress(job.run):
        options["progress"] = not (quiet or as_json)
    try:
        summary = job.run(**options)
    except TransferkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder without write permission: say which
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; nothing half-written was kept.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept (a training job's finished epochs "
              "were: the same command resumes from them).", file=sys.stderr)
        return 130
    if worker or sys.stdout is None:  # a closed stdout (`>&-`): nothing to print to
        return 0
    if "seconds" in summary:
        # The summary's clock starts inside the job; a user's starts at the command.
        summary["seconds"] = max(summary["seconds"], _seconds_since_process_start())
    try:
        if as_json:
            json.dump(summary, sys.stdout, default=str)
            sys.stdout.write("\n")
        else:
            text = job.render(summary)
            if text:
                print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`| head`): the work is done and saved; print nothing more, and
        # keep Python's exit flush from failing on the closed pipe with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a command stopped by SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
