"""Where a command may write: output paths that never swallow what transferkit did not write.

Every command that writes a folder calls :func:`prepare_output_folder` before its slow
part, and :func:`transferkit.bundle.save_bundle` applies the same rules again. The rules:

* a missing folder is created with a plain ``mkdir``, so the user's umask sets its mode;
* an existing file (or a link to one, a FIFO, a device...) is refused, and so is a
  non-empty folder that transferkit did not write: nothing in it is touched;
* the output may not be an input (data folder, teacher model...), lie inside one, or
  contain one;
* a folder transferkit wrote holds :data:`MARKER` (or, for models written before the
  marker existed, a ``config.json`` with ``format_version`` and ``method``). It is written
  again only with ``overwrite=True``, except when it holds an unfinished run of the same
  command: that run resumes from the checkpoints it left.

Writers replace only the entries transferkit wrote (the marker lists them); files a user
added to such a folder are kept.
"""

from __future__ import annotations

import json
import os
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


def write_json_atomic(path: Path, payload) -> None:
    """Write ``payload`` as JSON through a temporary file and ``os.replace``, with the mode
    a plain ``open`` would give (``mkstemp`` alone makes it 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def bundle_config(folder: Path) -> dict | None:
    """The ``config.json`` of a saved model in ``folder``, or None."""
    config = _read_json_object(Path(folder) / "config.json")
    if config is not None and "format_version" in config and "method" in config:
        return config
    return None


def is_transferkit_folder(folder: Path) -> bool:
    return read_marker(folder) is not None or bundle_config(folder) is not None


def marked_files(marker: dict | None) -> set[str]:
    """The entry names a marker lists as written by transferkit."""
    return {n for n in (marker or {}).get("files", []) if _plain_name(n)}


def own_entries(folder: Path) -> set[str]:
    """Names of the top-level entries of ``folder`` that transferkit wrote."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir() if p.name.startswith(OWN_PREFIX)}
    marker = read_marker(folder)
    names |= marked_files(marker)
    config = bundle_config(folder)
    if config is not None:
        names.update({"config.json", "metrics.json"})
        names.update(n for n in config.get("files", []) if _plain_name(n))
        if marker is None and "files" not in config:
            # A model saved before markers existed: fit also wrote its report there.
            names.update(LAYOUTS["fit"].entries)
    return names


def mark_output_folder(folder: Path, command: str | None, entries=()) -> None:
    """Write (or extend) the marker: transferkit wrote this folder and these entries in it."""
    folder = Path(folder)
    marker = read_marker(folder) or {}
    files = marked_files(marker) | set(entries)
    write_json_atomic(folder / MARKER, {
        "created_by": "transferkit", "command": command or marker.get("command"),
        "version": __version__, "files": sorted(files)})


def remove_entry(path: Path) -> None:
    """Delete one entry transferkit wrote: a link is removed, never followed."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


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
    new ones are written. Returns the resolved folder."""
    layout = LAYOUTS[command]
    folder = check_output_folder(out, command=command, inputs=inputs, overwrite=overwrite)
    if folder.is_dir():
        own = own_entries(folder)
        taken = [n for n in layout.entries if os.path.lexists(folder / n) and n not in own]
        if taken:
            raise OutputFolderError(f"{_shown(out, folder)}: {', '.join(taken)} was not written "
                                    f"by transferkit and `{command}` writes that name; give "
                                    "another output folder (nothing was changed).")
        if overwrite:
            for name in layout.work:
                if name in own and os.path.lexists(folder / name):
                    remove_entry(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    mark_output_folder(folder, command, layout.entries)
    return folder


def check_output_file(out, *, written_by_transferkit, inputs=(), overwrite: bool = False,
                      what: str = "file") -> Path:
    """Rules for a command that writes one file: a new path, or (with ``overwrite``) a file
    that ``written_by_transferkit(path)`` recognises. Returns the resolved path."""
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
