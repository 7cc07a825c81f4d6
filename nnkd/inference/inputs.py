"""Checking a folder of images before prediction: one clear error instead of a dead worker."""

import re
from pathlib import Path

import numpy as np

from nnkd.errors import NnkdError


def check_folders(input_folder: Path, output_folder: Path) -> tuple[Path, Path]:
    input_folder, output_folder = Path(input_folder).resolve(), Path(output_folder).resolve()
    if not input_folder.is_dir():
        raise NnkdError(f"input folder {input_folder} not found", "give the folder with your images")
    if output_folder == input_folder or input_folder in output_folder.parents:
        raise NnkdError(f"output folder {output_folder} is (inside) the input folder",
                        "write predictions elsewhere: the input folder is never modified")
    if output_folder.exists() and not output_folder.is_dir():
        raise NnkdError(f"output folder {output_folder} is a file", "give a folder (new or existing) for -o")
    return input_folder, output_folder


def nifti_is_complete(path: str) -> bool:
    """Whether a NIfTI file holds all the bytes its header promises, without decoding the image (SimpleITK
    silently fills a truncated .nii.gz with garbage, so this is checked before nnU-Net reads it): a .nii must be
    long enough; a .nii.gz's gzip trailer records its uncompressed size (mod 2³²), which must equal the header's
    offset plus the voxels. A trailer that disagrees (a truncated file, or several gzip members) is settled by
    decompressing the stream once. Raises on an unreadable header."""
    import gzip
    import struct

    import nibabel

    image = nibabel.load(path)
    header = image.header
    voxels = int(np.prod(header.get_data_shape()))
    offset = getattr(image.dataobj, "offset", None)  # where the voxels start in the (uncompressed) file
    expected = int(offset if offset is not None else header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
    size = Path(path).stat().st_size
    if not path.endswith(".gz"):
        return size >= expected
    with open(path, "rb") as f:
        f.seek(max(size - 4, 0))
        trailer = f.read(4)
    if len(trailer) == 4 and struct.unpack("<I", trailer)[0] == expected % 2 ** 32:
        return True
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (EOFError, OSError, gzip.BadGzipFile):
        return False
    return True


def check_complete(path: str) -> None:
    """A NIfTI file must hold all its voxels (nifti_is_complete); other formats are read by nnU-Net's reader."""
    if path.endswith((".nii", ".nii.gz")) and not nifti_is_complete(path):
        raise EOFError("the file ends before its last voxel (truncated)")


def check_nifti_voxels(path: str) -> None:
    """A NIfTI file nnU-Net can segment: at most three spatial axes (one channel per file) and, for floating
    point images, no NaN or infinite voxel (nnU-Net would segment them into garbage, with exit 0). Raises
    NnkdError with what is wrong; reads the voxels of floating point images once."""
    import nibabel

    image = nibabel.load(path)
    shape = tuple(int(n) for n in image.header.get_data_shape())
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise NnkdError(f"{Path(path).name} has {len(shape)} dimensions {shape}; nnU-Net reads one channel per file",
                        "split the channels into CASE_0000, CASE_0001, … files of one 3-D image each")
    if np.dtype(image.header.get_data_dtype()).kind == "f" or image.header.get_slope_inter()[0] not in (None, 1):
        data = np.asanyarray(image.dataobj)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad = int(data.size - np.isfinite(data).sum())
            raise NnkdError(f"{Path(path).name} has {bad} NaN or infinite voxel(s) of {data.size}",
                            "replace them (e.g. with the image's minimum) before predicting")


def collect_cases(input_folder: Path, file_ending: str, num_channels: int, reader) -> dict[str, list[str]]:
    """case id -> its channel files, each checked to be readable and complete before nnU-Net reads it: a NIfTI
    file by its header and size, its dimensions, and (floating point images) its voxels being finite
    (check_nifti_voxels); other formats by reading them."""
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[int, str]] = {}
    for path in sorted(input_folder.iterdir()):
        match = pattern.match(path.name)
        if match and path.is_file():
            cases.setdefault(match.group(1), {})[int(match.group(2))] = str(path)
    if not cases:
        raise NnkdError(f"no images named CASE_XXXX{file_ending} in {input_folder}",
                        "name images as nnU-Net expects, e.g. case_000_0000" + file_ending)
    for case, channels in cases.items():
        if sorted(channels) != list(range(num_channels)):
            found = ", ".join(f"_{c:04d}" for c in sorted(channels))
            raise NnkdError(f"case {case} has channel files {found}, the model needs {num_channels} "
                            f"(_0000 to _{num_channels - 1:04d})", "give every case all of the model's channels")
        files = [channels[c] for c in range(num_channels)]
        try:
            for f in files:
                check_complete(f)
            for f in files:
                if f.endswith((".nii", ".nii.gz")):
                    check_nifti_voxels(f)
            if not all(f.endswith((".nii", ".nii.gz")) for f in files):
                reader.read_images(files)
        except NnkdError as e:
            raise NnkdError(f"case {case}: {e.problem}", e.remedy) from e
        except Exception as e:  # readers raise anything from RuntimeError to EOFError on broken files
            raise NnkdError(f"cannot read case {case} ({', '.join(Path(f).name for f in files)}): "
                            f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}",
                            "replace the corrupt or unreadable image") from e
    return {case: [channels[c] for c in range(num_channels)] for case, channels in cases.items()}
