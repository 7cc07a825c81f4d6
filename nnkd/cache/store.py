"""On-disk soft predictions of a teacher, one blosc2 array per case beside nnU-Net's preprocessed data.

Layout: `$nnUNet_preprocessed/DatasetXXX/nnkd_teacher_cache/<data identifier>__fold<F>__<spec hash>[__<variant>]/`
(the variant names settings other than the default, e.g. `top2-half`: variants of one teacher live side by side) with
`cache.json` (teacher spec and checkpoint sha256, settings), per case `<case>.b2nd` (probabilities, C × spatial,
float16 or float32), or with `--topk K` `<case>.b2nd` (the K largest) plus `<case>_idx.b2nd` (their class
indices), and `<case>.entry.json` (the files' sha256 and the teacher sha256 the case was computed with). One
record per case lets several processes or machines (`-num_parts N -part_id I`) fill one cache at once without
rewriting a shared file; caches written before kept those records in `cache.json` and are still read. `--resolution
half` stores every spatial axis of the patch at half resolution (2× average pooling) and reads it back
with linear upsampling.
"""

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nnkd.atomic import write_json_atomic
from nnkd.errors import NnkdError
from nnkd.checkpoints import fingerprint, sha256_of

CACHE_FOLDER = "nnkd_teacher_cache"
MANIFEST = "cache.json"
ENTRY = ".entry.json"  # suffix of a case's record


@dataclass(frozen=True)
class CacheSettings:
    dtype: str = "float16"  # or float32
    resolution: str = "full"  # or half
    topk: int = 0  # 0: every class

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise NnkdError(f"--dtype {self.dtype} is not supported", "use float16 or float32")
        if self.resolution not in ("full", "half"):
            raise NnkdError(f"--resolution {self.resolution} is not supported", "use full or half")
        if self.topk < 0:
            raise NnkdError(f"--topk {self.topk} is negative", "give the number of classes to keep, or 0 for all")

    @property
    def variant(self) -> str:
        """The settings that differ from the default, as a folder-name part: "" (float16, full, every class),
        else e.g. "float32", "half", "top2-half"."""
        parts = [f"top{self.topk}"] if self.topk else []
        parts += ["half"] if self.resolution == "half" else []
        parts += ["float32"] if self.dtype == "float32" else []
        return "-".join(parts)

    @classmethod
    def from_variant(cls, variant: str) -> "CacheSettings":
        """Inverse of `variant` (`nnkd_train --cache-variant`)."""
        topk, resolution, dtype = 0, "full", "float16"
        for part in filter(None, (variant or "").split("-")):
            if part.startswith("top") and part[3:].isdigit() and int(part[3:]) > 0:
                topk = int(part[3:])
            elif part == "half":
                resolution = "half"
            elif part == "float32":
                dtype = "float32"
            else:
                raise NnkdError(f"--cache-variant {variant} is not a cache variant",
                                "give the settings of the cache as its folder names them, e.g. top2, half, "
                                "top2-half-float32 (leave it out for the default settings)")
        return cls(dtype, resolution, topk)


def cache_folder(preprocessed_dataset: Path, data_identifier: str, fold, spec: str,
                 settings: CacheSettings = CacheSettings()) -> Path:
    """Where the cache of one teacher spec for one fold's training cases, with `settings`, lives."""
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    name = f"{data_identifier}__fold{fold}__{digest}" + (f"__{settings.variant}" if settings.variant else "")
    return Path(preprocessed_dataset) / CACHE_FOLDER / name


def cache_variants(preprocessed_dataset: Path, data_identifier: str, fold, spec: str) -> dict[str, Path]:
    """The caches of one teacher spec for one fold (folders with a cache.json), by variant ("" for the default
    settings)."""
    default = cache_folder(preprocessed_dataset, data_identifier, fold, spec)
    found = {}
    for folder in sorted(default.parent.glob(f"{default.name}*")):
        variant = folder.name[len(default.name):].removeprefix("__")
        if folder.is_dir() and (folder.name == default.name or folder.name.startswith(f"{default.name}__")) \
                and (folder / MANIFEST).is_file():
            found[variant] = folder
    return found


def _downsample(probabilities: np.ndarray, axes: int) -> np.ndarray:
    """2× average pooling over the last `axes` spatial axes (the patch's), edges replicated to even sizes.
    A 2D configuration's (C, Z, Y, X) cases are pooled in-plane only."""
    x = torch.from_numpy(np.ascontiguousarray(probabilities, dtype=np.float32))
    batch = x[None] if axes == 3 or x.ndim == 3 else x.movedim(1, 0)  # (N, C, *pooled axes)
    odd = [v for n in reversed(batch.shape[2:]) for v in (0, n % 2)]
    if any(odd):
        batch = F.pad(batch, odd, mode="replicate")
    pooled = (F.avg_pool3d if axes == 3 else F.avg_pool2d)(batch, 2)
    return (pooled[0] if axes == 3 or x.ndim == 3 else pooled.movedim(0, 1)).numpy()


class TeacherCache:
    """One cache folder: writing cases as the teacher produces them, checking and opening them for training."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        try:
            self.manifest = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError as e:
            raise NnkdError(f"{path} is corrupt", f"delete {self.folder} and run nnkd_cache_teacher again") from e

    # ------------------------------------------------------------ writing
    @contextmanager
    def _locked(self):
        """Serialise manifest updates between processes filling this cache (an advisory lock on a file in the
        folder; the case files need none, each process writes its own cases)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                path = self.folder / MANIFEST
                self.manifest = json.loads(path.read_text()) if path.is_file() else {}
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def start(self, teacher, settings: CacheSettings, labels: dict, regions: bool, patch_size,
              configuration: str) -> None:
        """Record what this cache holds; cases computed with other settings are dropped, their files deleted (a
        top-k cache's `_idx` files would otherwise be left behind; other settings get a folder of their own,
        cache_folder, so this happens to a folder of an earlier nnkd, which kept every variant in one). Under the
        lock, on the manifest as it is on disk now, so a part that starts after another has begun keeps that part's
        cases."""
        with self._locked():
            if self.manifest.get("settings") != asdict(settings) or \
                    self.manifest.get("patch_size") != list(patch_size):
                self.manifest.pop("cases", None)
                for stale in [*self.folder.glob("*.b2nd"), *self.folder.glob(f"*{ENTRY}")]:
                    stale.unlink()
            for case, entry in self.manifest.pop("cases", {}).items():  # a cache of an earlier nnkd: one record each
                write_json_atomic(self._entry_file(case), entry)
            self.manifest.update(spec=teacher.spec, checkpoint=teacher.checkpoint_path,
                                 teacher_sha256=teacher.checkpoint_sha256, settings=asdict(settings), labels=labels,
                                 regions=regions, patch_size=list(patch_size), configuration=configuration)
            write_json_atomic(self.folder / MANIFEST, self.manifest)

    def _entry_file(self, case: str) -> Path:
        return self.folder / f"{case}{ENTRY}"

    @staticmethod
    def _read_entry(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except ValueError:  # a record cut short: the case is not current and is recomputed
            return None

    def entries(self) -> dict[str, dict]:
        """case -> its record ({teacher_sha256, shape, sha256 of its files}) for every case written so far."""
        found = dict(self.manifest.get("cases", {}))
        for path in sorted(self.folder.glob(f"*{ENTRY}")):
            found[path.name[:-len(ENTRY)]] = self._read_entry(path)
        return {case: entry for case, entry in found.items() if entry is not None}

    def entry(self, case: str) -> dict | None:
        path = self._entry_file(case)
        return self._read_entry(path) if path.is_file() else self.manifest.get("cases", {}).get(case)

    @property
    def settings(self) -> CacheSettings:
        return CacheSettings(**self.manifest["settings"])

    def _files(self, case: str) -> list[Path]:
        files = [self.folder / f"{case}.b2nd"]
        return files + [self.folder / f"{case}_idx.b2nd"] if self.settings.topk else files

    def is_current(self, case: str, teacher_sha256: str | None) -> bool:
        """The case's files exist, are intact, and came from this teacher checkpoint."""
        entry = self.entry(case)
        if entry is None or entry.get("teacher_sha256") != teacher_sha256:
            return False
        files = self._files(case)
        return all(f.is_file() for f in files) and [sha256_of(f) for f in files] == entry["sha256"]

    def write_case(self, case: str, probabilities: np.ndarray, teacher_sha256: str | None) -> None:
        """Store one case's probabilities (C × spatial, float32), each file written to a temp name and
        renamed, the case's record last."""
        import blosc2
        from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

        settings = self.settings
        patch = self.manifest["patch_size"]
        shape = probabilities.shape
        if settings.resolution == "half":
            probabilities = _downsample(probabilities, len(patch))
        arrays = [probabilities]
        if settings.topk:
            k = min(settings.topk, probabilities.shape[0])
            order = np.argsort(-probabilities, axis=0)[:k]
            arrays = [np.take_along_axis(probabilities, order, axis=0), order.astype(np.uint8)]
        arrays[0] = arrays[0].astype(settings.dtype)
        blosc2.set_nthreads(1)
        written = []
        for array, path in zip(arrays, self._files(case)):
            array = np.ascontiguousarray(array)
            blocks, chunks = comp_blosc2_params(array.shape, patch, bytes_per_pixel=array.itemsize)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            blosc2.asarray(array, urlpath=str(tmp), chunks=chunks, blocks=blocks,
                           cparams={"codec": blosc2.Codec.ZSTD, "clevel": 5}, mode="w")
            os.replace(tmp, path)
            written.append(path)
        write_json_atomic(self._entry_file(case), {"teacher_sha256": teacher_sha256, "shape": list(shape),
                                                   "sha256": [sha256_of(p) for p in written]})

    def record_size(self) -> None:
        """The cache's bytes on disk, for the record."""
        with self._locked():
            self.manifest["bytes"] = sum(p.stat().st_size for p in self.folder.glob("*.b2nd"))
            write_json_atomic(self.folder / MANIFEST, self.manifest)

    # ------------------------------------------------------------ reading
    def check(self, cases: list[str], spec: str) -> None:
        """Stop before training if any case is missing, corrupt or from another teacher checkpoint than the
        one on disk now (when it is still there: the cache alone suffices to train)."""
        if not self.manifest:
            raise NnkdError(f"no teacher cache in {self.folder}",
                            f"run nnkd_cache_teacher with --teacher '{spec}' and this fold first")
        checkpoints = [Path(p) for p in (self.manifest.get("checkpoint") or "").split(";") if p]
        if checkpoints and all(p.is_file() for p in checkpoints) and \
                fingerprint(checkpoints) != self.manifest.get("teacher_sha256"):
            raise NnkdError(f"the teacher checkpoint {self.manifest['checkpoint']} changed since the cache in "
                            f"{self.folder} was made", "run nnkd_cache_teacher again (stale cases are recomputed)")
        bad = [c for c in cases if not self.is_current(c, self.manifest.get("teacher_sha256"))]
        if bad:
            raise NnkdError(f"the teacher cache in {self.folder} lacks or has corrupt entries for {len(bad)} "
                            f"case(s), e.g. {bad[0]}", "run nnkd_cache_teacher again to (re)compute them (with "
                                                       "-num_parts: wait until every part has finished)")

    def open_case(self, case: str) -> "CachedProbabilities":
        return CachedProbabilities(self._files(case), self.entry(case)["shape"], self.settings,
                                   len(self.manifest["patch_size"]))


class CachedProbabilities:
    """A case's stored probabilities as a lazily read (C, *spatial) float32 array: slicing reads only the
    blosc2 chunks it needs, expands top-k and upsamples half resolution on the fly."""

    def __init__(self, files: list[Path], shape, settings: CacheSettings, patch_axes: int):
        self.files = files
        self.shape = tuple(shape)
        self.settings = settings
        self.patch_axes = patch_axes
        self._arrays = None

    def __getstate__(self):  # opened arrays stay in the process that opened them
        return {**self.__dict__, "_arrays": None}

    def _open(self):
        import blosc2

        if self._arrays is None:
            self._arrays = [blosc2.open(urlpath=str(f), mode="r", mmap_mode="r") for f in self.files]
        return self._arrays

    def _read(self, region: tuple[slice, ...]) -> np.ndarray:
        arrays = self._open()
        values = np.asarray(arrays[0][(slice(None), *region)], dtype=np.float32)
        if not self.settings.topk:
            return values
        indices = np.asarray(arrays[1][(slice(None), *region)]).astype(np.int64)
        classes = self.shape[0]
        rest = (1 - values.sum(0, keepdims=True)).clip(0) / max(1, classes - values.shape[0])
        dense = np.repeat(rest, classes, axis=0)
        np.put_along_axis(dense, indices, values, axis=0)
        return dense

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        spatial = [s if isinstance(s, slice) else slice(s, s + 1) for s in index[1:]]
        spatial += [slice(None)] * (len(self.shape) - 1 - len(spatial))
        bounds = [s.indices(n)[:2] for s, n in zip(spatial, self.shape[1:])]
        if self.settings.resolution == "full":
            out = self._read(tuple(slice(a, b) for a, b in bounds))
        else:
            out = self._read_half(bounds)
        return out[index[0] if index and isinstance(index[0], slice) else slice(None)]

    def _read_half(self, bounds) -> np.ndarray:
        """Read the half-resolution cells covering `bounds` (one cell of margin), upsample 2× linearly along
        the pooled axes, and cut out `bounds` exactly."""
        pooled_from = len(bounds) - self.patch_axes
        region, offsets = [], []
        for axis, (a, b) in enumerate(bounds):
            if axis < pooled_from:
                region.append(slice(a, b))
                offsets.append(0)
                continue
            cells = -(-self.shape[axis + 1] // 2)
            lo, hi = max(0, a // 2 - 1), min(cells, -(-b // 2) + 1)
            region.append(slice(lo, hi))
            offsets.append(a - 2 * lo)
        coarse = torch.from_numpy(self._read(tuple(region)))[None]
        size = [r.stop - r.start if i < pooled_from else 2 * (r.stop - r.start) for i, r in enumerate(region)]
        fine = F.interpolate(coarse, size=size, mode="trilinear" if coarse.ndim == 5 else "bilinear",
                             align_corners=False)[0].numpy()
        cut = tuple(slice(o, o + (b - a)) for o, (a, b) in zip(offsets, bounds))
        return fine[(slice(None), *cut)]
