"""Write files so that a kill leaves the old file or the new one, never a partial one."""

import json
import os
import shutil
import tempfile
from pathlib import Path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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


def replace_folder(staging: Path, target: Path) -> None:
    """Move a fully written `staging` folder to `target`, replacing an old `target` (kept until the swap)."""
    staging, target = Path(staging), Path(target)
    if target.exists():
        retired = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired)
    else:
        os.rename(staging, target)
