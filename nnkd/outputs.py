"""The one guard of every folder a command writes (`-o`): where it may be, what `--overwrite` may remove, and a
lock that keeps two commands out of it.

- `check_output` refuses, before anything is written: a file; a folder inside nnUNet_raw or nnUNet_preprocessed
  or holding one of nnU-Net's folders; a trained model folder (plans.json, dataset.json, fold_*/checkpoint*.pth)
  that nnkd did not write there, or anything inside any model folder; a folder under nnUNet_results that nnkd did not write; the command's input, a folder
  inside it or one holding it; and (for commands that replace their output) a non-empty folder that nnkd did
  not write, or that another nnkd command wrote.
- nnkd lists every file it writes into an output folder in its manifest (`MANIFEST`); a rerun or `--overwrite`
  replaces only those files, and `carry_foreign` moves everything else (files the user added) into the new
  output.
- `OutputLock` is an O_EXCL lock file beside the folder holding the pid, host and command of its holder; a
  second command stops with one line naming the first, a lock whose process is dead on this host is taken over.
"""

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError

MANIFEST = "nnkd_manifest.json"  # in an output folder: which command wrote it and the files it wrote
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def is_model_folder(folder: Path) -> bool:
    """An nnU-Net model folder: plans.json, dataset.json and at least one fold checkpoint."""
    folder = Path(folder)
    return ((folder / "plans.json").is_file() and (folder / "dataset.json").is_file()
            and any(folder.glob("fold_*/checkpoint*.pth")))


def read_manifest(folder: Path) -> dict | None:
    """The manifest nnkd wrote into `folder`, None where there is none (or it is not nnkd's)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None
    return manifest


def own_files(folder: Path) -> set[str]:
    """The paths (relative to `folder`) that nnkd's manifest lists, the manifest itself included."""
    manifest = read_manifest(folder)
    return set(manifest["files"]) | {MANIFEST} if manifest else set()


def files_under(folder: Path) -> list[str]:
    """Every file under `folder`, as paths relative to it."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def write_manifest(folder: Path, command: str, files: Iterable[str], add: bool = False) -> None:
    """Record that `command` wrote `files` (relative to `folder`) there; `add`: keep the files recorded before."""
    folder = Path(folder)
    earlier = read_manifest(folder) if add else None
    recorded = set(earlier["files"]) if earlier else set()
    write_json_atomic(folder / MANIFEST, {"command": command, "files": sorted(recorded | set(files) - {MANIFEST})})


def _nnunet_roots() -> dict[str, Path]:
    return {name: Path(os.environ[name]).expanduser().resolve() for name in NNUNET_FOLDERS if os.environ.get(name)}


def check_output(output: Path, command: str, inputs: Sequence[Path] = (), replaces: bool = True,
                 overwrite: bool = True, flag: str = "-o", own_preprocessed_folder: str | None = None) -> Path:
    """`output` resolved, once every rule of the module docstring holds; nothing is written. `inputs`: what the
    command reads (input images, the trained model it exports). `replaces`: the command replaces its output
    folder as a whole (export, distill); otherwise it adds files to it (predict). `overwrite`: an output an
    earlier run of `command` wrote may be replaced (else it must be new or empty). `own_preprocessed_folder`: the
    name of nnkd's own folder in a preprocessed dataset that the command may write (nnkd_synthesize's
    nnkd_transfer)."""
    output = Path(output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise NnkdError(f"{flag} {output} is a file", f"give a folder (new, or empty) for {flag}")
    roots = _nnunet_roots()
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        root = roots.get(name)
        if root is not None and _within(output, root):
            inside = output.relative_to(root).parts
            if name == "nnUNet_preprocessed" and own_preprocessed_folder and inside[1:2] == (own_preprocessed_folder,):
                continue
            raise NnkdError(f"{flag} {output} is inside {name} ({root})",
                            f"nnkd never writes into {name}; choose a {flag} outside it")
    for name, root in roots.items():
        if output in root.parents:
            raise NnkdError(f"{flag} {output} holds {name} ({root})", f"choose a {flag} of its own, outside it")
    for folder in (output, *output.parents):
        if folder == output and read_manifest(folder) is not None:
            continue  # a model folder nnkd exported there: replaced below by the rules of the manifest
        if is_model_folder(folder):
            where = "is" if folder == output else "is inside"
            raise NnkdError(f"{flag} {output} {where} the trained model folder {folder}",
                            f"write elsewhere: nnkd never modifies a trained model; choose a new {flag}")
    for given in inputs:
        given = Path(given).expanduser().resolve()
        if _within(output, given):
            raise NnkdError(f"{flag} {output} is (inside) the input {given}",
                            f"write elsewhere: the input is never modified; choose a {flag} outside it")
        if output in given.parents:
            raise NnkdError(f"{flag} {output} holds the input {given}",
                            f"write elsewhere: the input is never modified; choose a {flag} outside it")
    manifest = read_manifest(output) if output.is_dir() else None
    occupied = output.is_dir() and any(output.iterdir())
    results = roots.get("nnUNet_results")
    if occupied and manifest is None and (replaces or (results is not None and _within(output, results))):
        raise NnkdError(f"{flag} {output} exists, is not empty and was not written by {command}",
                        f"choose a new or empty {flag} ({command} replaces only what it wrote itself)")
    if occupied and manifest is not None and manifest.get("command") != command:
        raise NnkdError(f"{flag} {output} holds the output of {manifest.get('command')}",
                        f"choose another {flag} for {command}")
    if occupied and replaces and not overwrite:
        raise NnkdError(f"{flag} {output} exists and is not empty",
                        f"choose another {flag}, or pass --overwrite to replace what {command} wrote there")
    existing = next(p for p in (output, *output.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NnkdError(f"cannot write to {flag} {output} ({existing} is not writable)", f"choose a writable {flag}")
    return output


def check_replaceable(output: Path, names: Iterable[str], command: str, flag: str = "-o") -> None:
    """Files a command is about to write into `output` (relative names) may replace only files nnkd wrote."""
    mine = own_files(output)
    foreign = [n for n in names if (Path(output) / n).exists() and n not in mine]
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise NnkdError(f"{flag} {output} already holds {shown}, which {command} did not write",
                        f"choose another {flag}, or move those files away first")


def check_sibling(path: Path, output: Path, what: str) -> None:
    """A file written beside the output folder (OUT.zip) may replace only a file nnkd listed for `output`."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise NnkdError(f"{what} {path} exists and is not a file", f"remove or rename {path}, or choose another -o")
    if path.exists() and os.path.relpath(path, output) not in own_files(output):
        raise NnkdError(f"{what} {path} exists and was not written by nnkd for {output}",
                        f"move {path} away, or choose another -o")


def carry_foreign(old: Path, new: Path, own: set[str], prefix: str = "") -> list[str]:
    """Move every file of `old` that is not in `own` (paths relative to the output folder) to the same place
    in `new`; a folder holding none of nnkd's files moves whole. Returns what was moved."""
    moved = []
    for entry in sorted(Path(old).iterdir()):
        relative = prefix + entry.name
        target = Path(new) / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if any(f.startswith(relative + "/") for f in own) or target.exists():
                target.mkdir(exist_ok=True)
                moved += carry_foreign(entry, target, own, relative + "/")
                continue
        elif relative in own or relative == MANIFEST:
            continue
        if target.exists():  # nnkd now writes a file of that name: keep the user's under another one
            target = target.with_name(f"{entry.name}.kept-{os.getpid()}")
        os.rename(entry, target)
        moved.append(relative)
    return moved


# ------------------------------------------------------------------------------------------------ the lock
_HELD: dict[Path, int] = {}  # lock file -> nesting depth, in this process
HEARTBEAT_SECONDS = 60  # a holder touches its lock file this often
STALE_AFTER_SECONDS = 600  # a lock of another host untouched this long is stale (its holder died or lost the host)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat(threading.Thread):
    """Touches a held lock file every HEARTBEAT_SECONDS, so that another host can tell a live holder from a dead
    one by the file's age (a pid means nothing there)."""

    def __init__(self, path: Path):
        super().__init__(daemon=True, name=f"nnkd-lock-heartbeat {path.name}")
        self.path, self.stopped = path, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:  # removed by hand: nothing left to keep alive
                return


class OutputLock:
    """`with OutputLock(folder, command):` — one command at a time writes `folder`. The lock file,
    `.<name>.nnkd-lock` beside the folder, is created with O_EXCL semantics (a complete file hard-linked into
    place) and holds the holder's pid, host and command; while held it is touched every HEARTBEAT_SECONDS. A lock
    is stale — and taken over — when its holder's pid is gone (same host), or when it has not been touched for
    STALE_AFTER_SECONDS (another host, e.g. a cluster node sharing the folder). Re-entrant within one process."""

    def __init__(self, folder: Path, command: str):
        folder = Path(folder).expanduser().resolve()
        self.folder, self.command = folder, command
        self.path = folder.parent / f".{folder.name}.nnkd-lock"

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _untouched_seconds(self) -> float:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    def _stale(self, holder: dict) -> bool:
        if not holder:  # unreadable: stale once it is old (a complete lock is linked in place, never partial)
            return self._untouched_seconds() > 60
        if holder.get("host") == socket.gethostname():
            return not _alive(int(holder.get("pid", 0)))
        return self._untouched_seconds() > STALE_AFTER_SECONDS

    def acquire(self) -> None:
        if _HELD.get(self.path):
            _HELD[self.path] += 1
            return
        self._created = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "folder": str(self.folder), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        draft = self.path.with_name(f"{self.path.name}.{os.getpid()}")
        draft.write_text(json.dumps(mine) + "\n")
        try:
            for _ in range(5):
                try:
                    os.link(draft, self.path)  # fails when the lock exists: exclusive, and never half-written
                    _HELD[self.path] = 1
                    self._heartbeat = _Heartbeat(self.path)
                    self._heartbeat.start()
                    return
                except FileExistsError:
                    pass
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                if not self._stale(holder):
                    who = (f"{holder.get('command', 'another command')} (pid {holder.get('pid')} on "
                           f"{holder.get('host')}, since {holder.get('since')})" if holder else "another command")
                    elsewhere = holder and holder.get("host") != socket.gethostname()
                    raise NnkdError(f"{self.folder} is being written by {who}",
                                    f"wait for it to finish, or choose another folder; if it is no longer running, "
                                    f"remove {self.path}" + (f" (it is taken over by itself once untouched for "
                                                             f"{STALE_AFTER_SECONDS // 60} min)" if elsewhere else ""))
                aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                taken = json.loads(aside.read_text() or "{}") if aside.stat().st_size else {}
                if taken != holder:  # another command took the stale lock over first: give its lock back
                    try:
                        os.link(aside, self.path)
                    except FileExistsError:
                        pass
                aside.unlink(missing_ok=True)
                if holder:
                    why = "no longer running" if holder.get("host") == socket.gethostname() else \
                        f"on {holder.get('host')}, untouched for more than {STALE_AFTER_SECONDS // 60} min"
                    print(f"nnkd: note: took over the stale lock of {holder.get('command')} (pid {holder.get('pid')}, "
                          f"{why})")
            raise NnkdError(f"could not lock {self.folder}", f"retry; if it persists, remove {self.path}")
        except BaseException:
            draft.unlink(missing_ok=True)
            self._remove_created()
            raise
        finally:
            draft.unlink(missing_ok=True)

    def _remove_created(self) -> None:
        """Folders made for the lock file that are still empty (a refused command leaves nothing behind)."""
        for folder in getattr(self, "_created", []):
            try:
                folder.rmdir()
            except OSError:
                break

    def release(self) -> None:
        depth = _HELD.get(self.path, 0)
        if depth > 1:
            _HELD[self.path] = depth - 1
            return
        _HELD.pop(self.path, None)
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stopped.set()
        holder = self._holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self._remove_created()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

