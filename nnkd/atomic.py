"""Write files so that a kill leaves the old file or the new one, never a partial one."""

import ctypes
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` to `path` through a temporary file renamed into place, with the permissions a plain open() would
    give (0666 less the umask; mkstemp alone makes it 0600, which colleagues sharing the folder cannot read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj) -> None:
    """JSON as nnU-Net writes plans (indent 4, key order kept), atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=4, sort_keys=False) + "\n").encode())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_folder(staging: Path, target: Path, carry=None) -> None:
    """Move a fully written `staging` folder to `target`, replacing an old `target`. On Linux the two are
    swapped in one step, so `target` is always the old folder or the new one; elsewhere the old one is
    renamed aside first (for an instant `target` is absent, the old folder kept under a hidden name).
    `carry(old, new)`, where given, moves what must survive from the old folder into the new one before the old
    one is deleted."""
    staging, target = Path(staging), Path(target)
    if target.exists() and _exchange(staging, target):
        if carry is not None:
            carry(staging, target)
        shutil.rmtree(staging)  # now the old folder
    elif target.exists():
        retired = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, retired)
        os.rename(staging, target)
        if carry is not None:
            carry(retired, target)
        shutil.rmtree(retired)
    else:
        os.rename(staging, target)


def remove_stale_temporaries(path: Path) -> None:
    """Delete `<path>.tmp-<pid>` files (and staging folders) left by writers that were killed mid-write (their
    process is gone)."""
    path = Path(path)
    for leftover in path.parent.glob(f"{path.name}.tmp-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process
