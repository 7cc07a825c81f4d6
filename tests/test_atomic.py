"""Leftovers of writers killed mid-write are cleaned up; live writers' temporaries are kept."""

import os
import subprocess

from nnkd.atomic import remove_stale_temporaries


def test_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"final")
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        for pid in (dead.pid, live.pid, os.getpid()):
            (tmp_path / f"checkpoint_latest.pth.tmp-{pid}").write_bytes(b"partial")
        (tmp_path / "other.pth.tmp-1").write_bytes(b"not ours")
        remove_stale_temporaries(target)
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        live.kill()
    assert left == sorted(["checkpoint_latest.pth", f"checkpoint_latest.pth.tmp-{live.pid}",
                           f"checkpoint_latest.pth.tmp-{os.getpid()}", "other.pth.tmp-1"])
