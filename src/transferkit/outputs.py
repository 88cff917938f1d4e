"""Where a command may write: output paths that never swallow what transferkit did not write.

Every command that writes a folder calls :func:`prepare_output_folder` before its slow
part, and :func:`transferkit.bundle.save_bundle` applies the same rules again. The rules:

* a missing folder is created with a plain ``mkdir``, so the user's umask sets its mode;
* an existing file (or a link to one, a FIFO, a device...) is refused, and so is a
  non-empty folder that transferkit did not write: nothing in it is touched;
* the output may not be an input (data folder, teacher model...), lie inside one, or
  contain one;
* a folder transferkit wrote holds :data:`MARKER` (or, for models written before the
  marker existed, a ``config.json`` of the current format naming a bundle-saving method,
  beside that method's weights). It is written again only with ``overwrite=True``, except
  when it holds an unfinished run of the same command: that run resumes from the
  checkpoints it left;
* a link is never written through: a link where a command writes is refused, and every
  file is written as a temporary file moved over its path (``os.replace`` replaces a
  link rather than following it);
* a run that fails leaves no empty output folder behind (see
  :func:`removes_new_output_on_failure`).

Writers replace only the entries transferkit wrote. The marker lists them, but a marker is
a file anyone can edit: only names transferkit itself writes (:func:`transferkit_names`)
ever count, so files a user added to such a folder are kept, whatever the marker says.
"""

from __future__ import annotations

import contextvars
import functools
import io
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transferkit import __version__
from transferkit.errors import TransferkitError

MARKER = ".transferkit.json"
WORK_FOLDER = ".transferkit-work"
# Marker, work folder and staging folders: a user has no reason to name a file like this.
OWN_PREFIX = ".transferkit"


class OutputFolderError(TransferkitError):
    """The output path cannot be written without touching files transferkit did not write."""


@dataclass(frozen=True)
class OutputLayout:
    """What one command writes into its output folder."""

    entries: tuple[str, ...]  # top-level names it writes
    finished: str  # present once a run completed; without it the folder holds an interrupted run
    work: tuple[str, ...] = ()  # resumable training state, dropped when overwrite starts over


LAYOUTS = {
    "fit": OutputLayout(("config.json", "metrics.json", "report.html", "report_data.json",
                         WORK_FOLDER), "config.json", (WORK_FOLDER,)),
    "fewshot-train": OutputLayout(("config.json", "metrics.json", WORK_FOLDER), "config.json",
                                  (WORK_FOLDER,)),
    "adapt": OutputLayout(("summary.json", "domain_map.png", "report.html", "train"),
                          "summary.json", ("train",)),
    "adapt-demo": OutputLayout(("data", "run"), "run/summary.json"),
    "distill": OutputLayout(("summary.json", "student"), "summary.json"),
    "autoencoder": OutputLayout(("summary.json", "reconstructions.png", "train"),
                                "summary.json", ("train",)),
    "layers": OutputLayout(("layers.csv", "layers.json", "layers.png", "report.html"),
                           "layers.json"),
    "anomaly": OutputLayout(("anomaly.json", "scores.csv"), "anomaly.json"),
    "demo": OutputLayout(("data", "models"), "models"),
}


# -- permissions ---------------------------------------------------------------------------

def current_umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere it can only be read by setting it; the stricter stand-in means a file another
    # thread creates in that instant is at worst private, never too open.
    old = os.umask(0o077)
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file or folder under the user's umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def apply_default_modes(root: Path) -> None:
    """Give ``root`` and everything in it (all just written by transferkit) the modes the
    umask gives, undoing the private 0600/0700 of ``tempfile``'s files and folders."""
    file_mode, dir_mode = default_mode(), default_mode(directory=True)
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            wanted = dir_mode
        elif stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            wanted = file_mode  # a hard link shares its mode with a file outside this tree
        else:
            continue
        if stat.S_IMODE(info.st_mode) != wanted:
            os.chmod(path, wanted)


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """The one way transferkit writes a file: through a temporary file in the same folder
    and ``os.replace``, so a reader sees the old content or the new, never a part; with
    the mode a plain ``open`` would give (``mkstemp`` alone makes it 0600). A link at
    ``path`` is replaced, never written through. ``durable`` fsyncs before the rename, so
    a crash cannot leave an empty file under the new name; the feature cache skips it
    (an empty entry is recomputed, and one fsync per image would cost more than it saves)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def save_figure_atomic(figure, path: Path, **savefig_options) -> Path:
    """``figure.savefig`` into memory, then :func:`write_bytes_atomic`: matplotlib itself
    opens the path, which would follow a link there."""
    path = Path(path)
    buffer = io.BytesIO()
    savefig_options.setdefault("format", path.suffix.lstrip(".").lower() or "png")
    figure.savefig(buffer, **savefig_options)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def make_staging_folder(parent: Path, prefix: str) -> Path:
    """A new, uniquely named folder (mode from the umask, unlike ``tempfile.mkdtemp``)."""
    for _ in range(100):
        candidate = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise OutputFolderError(f"{parent}: cannot create a staging folder ({prefix}*).")


# -- what transferkit wrote ----------------------------------------------------------------

def _plain_name(name) -> bool:
    # A marker is read from disk: a listed "../x" must never reach outside the folder.
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _read_json_object(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_marker(folder: Path) -> dict | None:
    marker = _read_json_object(Path(folder) / MARKER)
    return marker if marker is not None and marker.get("created_by") == "transferkit" else None


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def bundle_config(folder: Path) -> dict | None:
    """The ``config.json`` of a saved model in ``folder``, or None.

    Many projects keep a ``config.json``; it counts as a model's only when it is of the
    current bundle format, names a registered bundle-saving method and that method's
    weights lie beside it (a regular file, not a link)."""
    from transferkit.bundle import FORMAT_VERSION, METHOD_FILES, weight_files
    from transferkit.methods import list_methods

    folder = Path(folder)
    config = _read_json_object(folder / "config.json")
    if config is None:
        return None
    version, method = config.get("format_version"), config.get("method")
    # type(): true == 1 in Python, but a JSON true is no format version.
    if type(version) is not int or version != FORMAT_VERSION or not isinstance(method, str):
        return None
    if method not in METHOD_FILES or method not in list_methods(saves_bundle=True):
        return None
    weights = weight_files(method)
    return config if any(_is_regular_file(folder / name) for name in weights) else None


def is_transferkit_folder(folder: Path) -> bool:
    return read_marker(folder) is not None or bundle_config(folder) is not None


def transferkit_names() -> frozenset[str]:
    """Every top-level name a command or a saved model writes, and the marker: the only
    names a marker or ``config.json`` can claim as transferkit's."""
    from transferkit.bundle import bundle_file_names

    commands = (name for layout in LAYOUTS.values() for name in layout.entries)
    return frozenset({MARKER, *commands, *bundle_file_names()})


def marked_files(marker: dict | None) -> set[str]:
    """The entry names a marker lists as written by transferkit, less any name transferkit
    never writes: a marker is a file anyone can edit."""
    listed = (marker or {}).get("files", [])
    if not isinstance(listed, list):
        return set()
    return {n for n in listed if _plain_name(n)} & transferkit_names()


def own_entries(folder: Path) -> set[str]:
    """Names of the top-level entries of ``folder`` that transferkit wrote."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir() if p.name.startswith(OWN_PREFIX)}
    marker = read_marker(folder)
    names |= marked_files(marker)
    config = bundle_config(folder)
    if config is not None:
        files = config.get("files")
        listed = {"config.json", "metrics.json", *(files if isinstance(files, list) else [])}
        if "files" not in config:
            # A model saved before bundles listed their files: its weights are whichever of
            # its method's weight names is there (a linear probe has two; both present is
            # ambiguous, so neither is claimed).
            from transferkit.bundle import weight_files

            present = [name for name in weight_files(config["method"])
                       if os.path.lexists(folder / name)]
            listed.update(present if len(present) == 1 else [])
            if marker is None:  # saved before markers existed: fit also wrote its report
                listed.update(LAYOUTS["fit"].entries)
        names |= {n for n in listed if _plain_name(n)} & transferkit_names()
    return names


def mark_output_folder(folder: Path, command: str | None, entries=()) -> None:
    """Write (or extend) the marker: transferkit wrote this folder and these entries in it."""
    folder = Path(folder)
    marker = read_marker(folder) or {}
    files = marked_files(marker) | set(entries)
    write_json_atomic(folder / MARKER, {
        "created_by": "transferkit", "command": command or marker.get("command"),
        "version": __version__, "files": sorted(files)})


def input_folders(*path_lists) -> set[Path]:
    """The folders holding the images of ``path_lists`` (e.g. the rows of a CSV), as inputs
    for :func:`prepare_output_folder`: an output over them would delete the data just used.
    One entry per folder, so the check stays cheap for any number of images."""
    return {Path(path).parent for paths in path_lists if paths is not None for path in paths}


def remove_entry(path: Path) -> None:
    """Delete one entry transferkit wrote: a link is removed, never followed."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


# What the training loop writes into a run folder (transferkit.train.checkpoint and .loop):
# the pointer and metrics table of each run, and the files of its checkpoint folders.
_RUN_FILES = frozenset({"latest.json", "metrics.csv"})
_CHECKPOINT_FILES = frozenset({"model.safetensors", "best.safetensors", "state.pt",
                               "progress.json", "result.json"})
_CHECKPOINT_FOLDER = re.compile(r"ckpt-\d{4,}|final|\.final-.+")
# What an interrupted write_bytes_atomic of one of those may leave beside it.
_LEFT_OVER = re.compile(r"\.(%s)\..+\.tmp" % "|".join(
    re.escape(name) for name in sorted(_RUN_FILES | _CHECKPOINT_FILES)))


def remove_training_state(path: Path) -> None:
    """Delete the resumable training state under a work folder a command wrote (``train/``
    of ``adapt``): in each run folder (one holding the loop's pointer or checkpoint
    folders) the files the training loop writes, then the folders left empty. A file a
    user put there stays, with the folders above it; links are removed, never followed."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    walk = list(os.walk(path, topdown=False))  # links to folders are listed, not entered
    runs = {Path(root) for root, folders, files in walk
            if "latest.json" in files or any(_CHECKPOINT_FOLDER.fullmatch(f) for f in folders)}
    for root, folders, files in walk:
        here = Path(root)
        in_run = here in runs
        in_checkpoint = here.parent in runs and _CHECKPOINT_FOLDER.fullmatch(here.name)
        for name in files:
            if (in_run and (name in _RUN_FILES or _LEFT_OVER.fullmatch(name))) or (
                    in_checkpoint and name in _CHECKPOINT_FILES):
                (here / name).unlink()
        for name in folders:
            if (here / name).is_symlink():
                continue  # not ours to follow or to remove
            try:
                (here / name).rmdir()  # only when nothing is left in it
            except OSError:
                pass
    try:
        path.rmdir()
    except OSError:
        pass


# -- the checks ----------------------------------------------------------------------------

def _shown(given, resolved: Path) -> str:
    return str(resolved) if Path(given).name in ("", ".", "..") else str(given)


def resolve_output(out) -> Path:
    """``out`` as an absolute path with links resolved; a dangling link is refused, since
    writing through it would create whatever path it names."""
    path = Path(out)
    if path.is_symlink() and not path.exists():
        raise OutputFolderError(f"{out}: is a link to {os.readlink(path)}, which does not exist; "
                                "give a real output path (nothing was changed).")
    return path.resolve()


def check_not_an_input(out: Path, inputs, shown: str) -> None:
    """Refuse an output that is an input, lies inside an input folder or contains an input."""
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if source == out:
            relation = "is"
        elif source.is_relative_to(out):
            relation = "contains"
        elif out.is_relative_to(source) and not source.is_file():
            relation = "lies inside"
        else:
            continue
        raise OutputFolderError(f"the output {shown} {relation} the input {given}; transferkit "
                                "never writes into or over its inputs: give an output path "
                                "outside it (nothing was changed).")


def _listing(entries: list[Path]) -> str:
    names = sorted(p.name for p in entries)
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def _finished_result(folder: Path, marker: dict | None) -> str | None:
    """What finished run ``folder`` holds (e.g. "a saved model"), or None."""
    if bundle_config(folder) is not None:
        return "a saved model"
    command = (marker or {}).get("command")
    layout = LAYOUTS.get(command)
    if layout is not None and (folder / layout.finished).exists():
        return f"the result of `transferkit {command}`"
    return None


def _check_existing_folder(folder: Path, shown: str, command: str | None,
                           overwrite: bool) -> None:
    """Refuse an existing folder that ``command`` may not write."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise OutputFolderError(f"{shown}: cannot read this folder ({exc.strerror}); give "
                                "another output folder.") from exc
    if not entries:
        return
    # A folder holding only a work folder lost its marker, not its owner.
    only_own_names = all(p.name.startswith(OWN_PREFIX) for p in entries)
    if not (is_transferkit_folder(folder) or only_own_names):
        raise OutputFolderError(f"{shown}: this folder is not empty ({_listing(entries)}) and "
                                "was not written by transferkit; give a new or empty output "
                                "folder (nothing was changed).")
    if overwrite:
        return
    marker = read_marker(folder)
    finished = _finished_result(folder, marker)
    if finished is not None:
        raise OutputFolderError(f"{shown} already holds {finished}; add --overwrite "
                                "(overwrite=True) to replace it (files you added there are "
                                "kept) or give another output folder.")
    other = (marker or {}).get("command")
    if command is not None and other is not None and other != command:
        raise OutputFolderError(f"{shown} holds an unfinished `transferkit {other}` run; add "
                                f"--overwrite (overwrite=True) to write `{command}` output "
                                "there, or give another output folder.")


def _refuse_links(folder: Path, names, shown: str) -> None:
    """A link is never something transferkit wrote (it writes files and folders): whoever
    put it there may mean it, so it is refused rather than replaced or followed."""
    linked = sorted(name for name in names if (folder / name).is_symlink())
    if linked:
        what = "is a symbolic link" if len(linked) == 1 else "are symbolic links"
        raise OutputFolderError(f"{shown}: {', '.join(linked)} {what}, and transferkit never "
                                "writes through a link; remove it or give another output "
                                "folder (nothing was changed).")


def check_output_folder(out, *, command: str | None = None, inputs=(),
                        overwrite: bool = False) -> Path:
    """Apply the module's rules to ``out`` without changing anything; returns it resolved.

    ``command`` None accepts an unfinished run of any command (a bundle written into a
    folder its job already prepared)."""
    folder = resolve_output(out)
    shown = _shown(out, folder)
    check_not_an_input(folder, inputs, shown)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{shown}: exists and is not a folder; give a new output "
                                "folder name (nothing was changed).")
    if folder.is_dir():
        _check_existing_folder(folder, shown, command, overwrite)
    return folder


def prepare_output_folder(out, *, command: str, inputs=(), overwrite: bool = False) -> Path:
    """Check ``out`` (see the module docstring), create it and mark it as ``command``'s.

    Call it before the slow part of a job. With ``overwrite`` the previous run's resumable
    training state is dropped, so the run starts over; its other files are replaced as the
    new ones are written. Returns the resolved folder.

    Under several processes (``torchrun``, ``accelerate launch``) only the main process
    checks and prepares the folder; the others wait for it, get its answer (the folder,
    or its error, raised on every process) and write nothing."""
    from transferkit.train.distributed import is_distributed, on_main_process

    if is_distributed():
        return on_main_process(_prepare_output_folder, out, command=command, inputs=inputs,
                               overwrite=overwrite)
    return _prepare_output_folder(out, command=command, inputs=inputs, overwrite=overwrite)


def _prepare_output_folder(out, *, command: str, inputs=(), overwrite: bool = False) -> Path:
    layout = LAYOUTS[command]
    folder = check_output_folder(out, command=command, inputs=inputs, overwrite=overwrite)
    new_folder = not folder.exists()
    new_marker = not os.path.lexists(folder / MARKER)
    if folder.is_dir():
        own = own_entries(folder)
        _refuse_links(folder, {*layout.entries, MARKER, *own}, _shown(out, folder))
        taken = [n for n in layout.entries if os.path.lexists(folder / n) and n not in own]
        if taken:
            raise OutputFolderError(f"{_shown(out, folder)}: {', '.join(taken)} was not written "
                                    f"by transferkit and `{command}` writes that name; give "
                                    "another output folder (nothing was changed).")
        if overwrite:
            for name in layout.work:
                if name in own and os.path.lexists(folder / name):
                    # A work folder of transferkit's own name holds nothing of the user's.
                    remove = remove_entry if name.startswith(OWN_PREFIX) else remove_training_state
                    remove(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    mark_output_folder(folder, command, layout.entries)
    prepared = _prepared_in_this_run.get()
    if prepared is not None and new_marker:
        prepared.append((folder, new_folder))
    return folder


# (folder, whether it was created) for each folder prepare_output_folder marked during the
# job running in this context; None outside a job.
_prepared_in_this_run: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "transferkit_prepared_outputs", default=None)


def _undo_preparation(folder: Path, created: bool) -> None:
    try:
        if [p.name for p in folder.iterdir()] != [MARKER]:
            return  # the job wrote something (checkpoints to resume from, say): keep it
        (folder / MARKER).unlink()
        if created:
            folder.rmdir()
    except OSError:
        pass  # only tidying: the job's own error is what the user needs to see


def removes_new_output_on_failure(job):
    """Decorate a job's ``run``: when it fails, an output folder it had
    :func:`prepare_output_folder` mark, and that still holds nothing but the marker, is
    taken back (removed if this run created it, else left as it was found), so a refused
    run leaves nothing behind."""

    @functools.wraps(job)
    def run(*args, **kwargs):
        prepared: list = []
        token = _prepared_in_this_run.set(prepared)
        try:
            return job(*args, **kwargs)
        except BaseException:
            for folder, created in reversed(prepared):
                _undo_preparation(folder, created)
            raise
        finally:
            _prepared_in_this_run.reset(token)

    return run


def check_output_file(out, *, written_by_transferkit, inputs=(), overwrite: bool = False,
                      what: str = "file") -> Path:
    """Rules for a command that writes one file: a new path, or (with ``overwrite``) a file
    that ``written_by_transferkit(path)`` recognises. Returns the resolved path."""
    if Path(out).is_symlink():
        raise OutputFolderError(f"{out}: is a symbolic link, and transferkit never writes "
                                f"through a link; give the path of a new or regular {what} "
                                "(nothing was changed).")
    path = resolve_output(out)
    shown = _shown(out, path)
    check_not_an_input(path, inputs, shown)
    if os.path.lexists(path):
        if not path.is_file():
            raise OutputFolderError(f"{shown}: exists and is not a regular file; give a new "
                                    f"{what} name (nothing was changed).")
        if not written_by_transferkit(path):
            raise OutputFolderError(f"{shown}: exists and was not written by transferkit; give "
                                    f"a new {what} name (nothing was changed).")
        if not overwrite:
            raise OutputFolderError(f"{shown}: already exists; add --overwrite (overwrite=True) "
                                    f"to replace it, or give another {what} name.")
    return path
