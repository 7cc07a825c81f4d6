"""Parameters and CPU forward cost of each teacher family at its published size, side by side.

    python benchmarks/teacher_cost.py [--out docs] [--threads N]

Each foundation-model family is built at its published architecture with random weights (cost does not
depend on them), saved in its published checkpoint layout and loaded through `create_teacher`, exactly
as a user's file would be; deepbet runs with its real weights. 2D teachers are timed on a 3D patch of 2
slices (each slice goes through the model at its native size, so a patch costs `slices` × the per-slice
time); 3D teachers on a 64×128×128 patch. MedCLIP's vision tower is Swin-T at 224², the `swin` row.
Writes docs/teacher_cost.{md,json}.
"""

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm


def _save_hf(model, folder: Path) -> str:
    model.save_pretrained(folder)
    return str(folder)


def build_checkpoints(root: Path) -> dict[str, str]:
    """Spec of each family, pointing to a full-size random checkpoint in its published layout under root."""
    from segment_anything import sam_model_registry
    from transformers import Dinov2Config, Dinov2Model, SwinConfig, SwinModel

    from nnkd.teachers import sam_med3d
    from nnkd.teachers.sam import ViTGeometry

    torch.manual_seed(0)
    sam_file = root / "sam_vit_b_01ec64.pth"
    torch.save(sam_model_registry["vit_b"]().state_dict(), sam_file)
    published_3d = ViTGeometry(embed_dim=768, in_chans=1, patch_size=16, img_size=128, depth=12, num_heads=12,
                               mlp_hidden=3072, window_size=14, global_blocks=(2, 5, 8, 11), out_chans=384,
                               qkv_bias=True)
    encoder = sam_med3d.ImageEncoderViT3D(published_3d)
    med3d_file = root / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}}, med3d_file)
    dino = _save_hf(Dinov2Model(Dinov2Config()), root / "dinov2-base")  # Dinov2Config() is ViT-B/14
    swin = _save_hf(SwinModel(SwinConfig()), root / "swin-tiny")  # SwinConfig() is Swin-T, window 7, 224²
    return {"deepbet": "deepbet", "sam-med3d": f"sam-med3d:{med3d_file}", "sam": f"sam:{sam_file}?slices=2",
            "medsam": f"medsam:{sam_file}?slices=2", "dinov2": f"dinov2:{dino}?slices=2",
            "rad-dino": f"rad-dino:{dino}?slices=2", "swin": f"swin:{swin}?slices=2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nnkd.teachers.describe import time_forward
    from nnkd.teachers.registry import create_teacher

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = build_checkpoints(Path(tmp))
        for family, spec in tqdm(specs.items(), desc="teachers"):
            teacher = create_teacher(spec)
            two_d = teacher.spatial_dims == 2
            patch = (2, 128, 128) if two_d else (64, 128, 128)
            seconds, shapes = time_forward(teacher, patch)
            info = teacher.describe()
            rows.append({"family": family, "parameters_M": round(info["parameters"] / 1e6, 2),
                         "model_input": info.get("input_size") or list(patch),
                         "patch": list(patch), "seconds_per_patch": round(seconds, 3),
                         "seconds_per_slice": round(seconds / patch[0], 3) if two_d else None,
                         "feature_shapes": shapes, "logits": info["logits"]})
            del teacher

    args.out.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {args.threads} CPU threads, torch {torch.__version__}"
    (args.out / "teacher_cost.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    lines = [f"Measured by `benchmarks/teacher_cost.py` on {machine}; one forward pass, no grad, after warm-up.",
             "", "| family | parameters | model input | patch timed | seconds per patch | seconds per 2D slice "
             "| stage maps (channels × grid) | logits |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_slice = f"{r['seconds_per_slice']:.2f}" if r["seconds_per_slice"] is not None else "–"
        maps = ", ".join("×".join(map(str, s)) for s in r["feature_shapes"])
        lines.append(f"| {r['family']} | {r['parameters_M']:.2f} M | {'×'.join(map(str, r['model_input']))} | "
                     f"{'×'.join(map(str, r['patch']))} | {r['seconds_per_patch']:.2f} | {per_slice} | {maps} | "
                     f"{'yes' if r['logits'] else 'no'} |")
    (args.out / "teacher_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
