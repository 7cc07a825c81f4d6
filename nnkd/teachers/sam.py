"""SAM and MedSAM image encoders as 2D feature teachers, loaded from their published checkpoints.

sam_vit_{b,l,h}_*.pth (facebookresearch/segment-anything) and medsam_vit_b.pth (bowang-lab/MedSAM) are
plain state dicts of the whole Sam model; only the `image_encoder.*` weights are kept and rebuilt with
segment-anything's ImageEncoderViT. Its shape is read from the weights rather than from a variant table,
so vit_b/l/h and smaller models load alike: width and patch size from patch_embed.proj, input size from
pos_embed, depth from the block count, heads from the width of the relative-position tables, and which
blocks attend globally from their table lengths (2·grid − 1 for global blocks, 2·window − 1 for windowed).

Options: `blocks` (indexes of the blocks whose outputs become stages; default the global-attention
blocks, 2,5,8,11 for vit_b), `slices` (at most this many slices of a 3D patch per step, default 8),
`variant` (vit_b, vit_l or vit_h: checked against the weights, which decide the shape anyway).

Bridges follow each model's inference code. SAM (SamPredictor + Sam.preprocess): an RGB image in
[0, 255] standardised with SAM's pixel mean/std at 1024². MedSAM (MedSAM_Inference.py): the grey image
repeated to 3 channels, resized to 1024² and min–max scaled to [0, 1], fed to the encoder with no
mean/std (its pre_CT_MR.py windows MR by the 0.5–99.5 percentiles, as the bridge's unit range does).
"""

import argparse
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from nnkd.errors import NnkdError
from nnkd.teachers.bridge import InputBridge
from nnkd.checkpoints import load_checkpoint
from nnkd.teachers.image_encoder import ImageEncoderTeacher
from nnkd.teachers.registry import register_teacher

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
VARIANTS = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32)}  # embed width, depth
DEFAULTS = {"blocks": (), "slices": 8, "variant": ""}
# Where fine-tuning scripts nest the model's weights (SAM-Med3D's train.py, MedSAM's train_one_gpu.py).
NESTED_STATE_KEYS = ("model_state_dict", "model", "state_dict")


@dataclass(frozen=True)
class ViTGeometry:
    """The shape of a SAM-style ViT image encoder (2D or 3D), as its weights reveal it."""

    embed_dim: int
    in_chans: int
    patch_size: int
    img_size: int
    depth: int
    num_heads: int
    mlp_hidden: int
    window_size: int  # 0: every block attends globally
    global_blocks: tuple[int, ...]
    out_chans: int
    qkv_bias: bool


def image_encoder_state(path: str, family: str, published: str) -> dict:
    """The `image_encoder.*` weights of a checkpoint, prefix removed. Training scripts also pickle their
    argparse arguments; a Namespace holds no code, so it is allowed beside the tensors."""
    if not path:
        raise NnkdError(f"the {family} teacher needs a checkpoint path", f"e.g. {family}:/ckpt/{published}")
    checkpoint = load_checkpoint(path, allowed_globals=[argparse.Namespace])
    state = next((checkpoint[k] for k in NESTED_STATE_KEYS if isinstance(checkpoint.get(k), dict)), checkpoint)
    prefix = "image_encoder."
    encoder = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not encoder:
        raise NnkdError(f"{path} holds no image_encoder.* weights, so it is not a {family} checkpoint",
                        f"point to the published file ({published}) or a fine-tuned copy of it")
    return encoder


def vit_geometry(state: dict, path: str, family: str, spatial_dims: int) -> ViTGeometry:
    """Read the encoder's shape from its weights (works on meta tensors too)."""
    try:
        patch_embedding = state["patch_embed.proj.weight"]
        grid = state["pos_embed"].shape[1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        head_dim = state["blocks.0.attn.rel_pos_h"].shape[1]
        spans = [(state[f"blocks.{i}.attn.rel_pos_h"].shape[0] + 1) // 2 for i in range(depth)]
        mlp_hidden = state["blocks.0.mlp.lin1.weight"].shape[0]
        out_chans = state["neck.0.weight"].shape[0]
    except (KeyError, ValueError) as e:
        missing = f"image_encoder.{e.args[0]}" if isinstance(e, KeyError) else "image_encoder.blocks.*"
        raise NnkdError(f"the image encoder in {path} lacks {missing}",
                        "the checkpoint is not in the published SAM layout (a ViT with relative positions)") from e
    if patch_embedding.ndim != spatial_dims + 2:
        raise NnkdError(f"{path} holds a {patch_embedding.ndim - 2}D image encoder, the {family} teacher takes a "
                        f"{spatial_dims}D one",
                        "use sam-med3d for SAM-Med3D checkpoints, sam or medsam for 2D SAM ones")
    embed_dim, in_chans, patch_size = patch_embedding.shape[:3]
    windows = {span for span in spans if span != grid}
    if len(windows) > 1:
        raise NnkdError(f"the image encoder in {path} mixes window sizes {sorted(windows)}",
                        "only SAM-style encoders (one window size plus global blocks) are supported")
    return ViTGeometry(embed_dim=embed_dim, in_chans=in_chans, patch_size=patch_size, img_size=grid * patch_size,
                       depth=depth, num_heads=embed_dim // head_dim, mlp_hidden=mlp_hidden,
                       window_size=windows.pop() if windows else 0,
                       global_blocks=tuple(i for i, span in enumerate(spans) if span == grid),
                       out_chans=out_chans, qkv_bias="blocks.0.attn.qkv.bias" in state)


def stage_blocks(requested: tuple[int, ...], geometry: ViTGeometry, family: str) -> tuple[int, ...]:
    """The blocks whose outputs are stages: the requested ones, or the global-attention blocks."""
    blocks = tuple(sorted(set(requested or geometry.global_blocks or (geometry.depth - 1,))))
    if any(not 0 <= b < geometry.depth for b in blocks):
        raise NnkdError(f"option blocks={','.join(map(str, requested))} of {family} teacher is out of range",
                        f"the encoder has blocks 0…{geometry.depth - 1}")
    return blocks


def load_encoder_weights(encoder: nn.Module, state: dict, path: str) -> None:
    try:
        encoder.load_state_dict(state)
    except RuntimeError as e:
        detail = str(e).strip().splitlines()[-1].strip()[:200]
        raise NnkdError(f"the image encoder in {path} does not fit the architecture read from it: {detail}",
                        "the checkpoint is damaged or not in the published layout") from e


class SamEncoderTeacher(ImageEncoderTeacher):
    """A frozen SAM-style ImageEncoderViT: chosen block outputs, then the neck's image embedding."""

    lora_targets = ("attn.qkv", "attn.proj")

    def __init__(self, encoder: nn.Module, blocks: tuple[int, ...], geometry: ViTGeometry, bridge: InputBridge,
                 max_slices: int):
        stride = (geometry.patch_size, geometry.patch_size)
        super().__init__(bridge, [geometry.embed_dim] * len(blocks) + [geometry.out_chans],
                         [stride] * (len(blocks) + 1), max_slices)
        self.encoder = encoder
        self.stage_blocks = blocks

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.encoder.patch_embed(images) + self.encoder.pos_embed  # channels-last (N, h, w, C)
        stages = []
        for index, block in enumerate(self.encoder.blocks):
            x = block(x)
            if index in self.stage_blocks:
                stages.append(x.permute(0, 3, 1, 2))
        return stages + [self.encoder.neck(x.permute(0, 3, 1, 2))]

    def describe(self) -> dict:
        return super().describe() | {"blocks": list(self.stage_blocks)}


def build_sam_teacher(family: str, path: str, options: dict, device, published: str,
                      bridge_for_size) -> SamEncoderTeacher:
    if options["slices"] < 1:
        raise NnkdError(f"option slices={options['slices']} of {family} teacher must be at least 1", "e.g. slices=8")
    if options["variant"] and options["variant"] not in VARIANTS:
        raise NnkdError(f"unknown {family} variant '{options['variant']}'", f"use one of {', '.join(VARIANTS)}")
    try:
        from segment_anything.modeling import ImageEncoderViT
    except ImportError as e:
        raise NnkdError(f"the {family} teacher needs the segment-anything package",
                        "pip install 'nnkd[teachers]'") from e
    state = image_encoder_state(path, family, published)
    geometry = vit_geometry(state, path, family, 2)
    if options["variant"] and VARIANTS[options["variant"]] != (geometry.embed_dim, geometry.depth):
        raise NnkdError(f"{path} holds a ViT of width {geometry.embed_dim} and depth {geometry.depth}, not "
                        f"{options['variant']}", "drop the variant option or point to the matching checkpoint")
    encoder = ImageEncoderViT(
        img_size=geometry.img_size, patch_size=geometry.patch_size, in_chans=geometry.in_chans,
        embed_dim=geometry.embed_dim, depth=geometry.depth, num_heads=geometry.num_heads,
        mlp_ratio=geometry.mlp_hidden / geometry.embed_dim, out_chans=geometry.out_chans, qkv_bias=geometry.qkv_bias,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=geometry.window_size,
        global_attn_indexes=geometry.global_blocks)
    load_encoder_weights(encoder, state, path)
    teacher = SamEncoderTeacher(encoder, stage_blocks(options["blocks"], geometry, family), geometry,
                                bridge_for_size(geometry.img_size), options["slices"])
    teacher.set_checkpoint(path)
    return teacher.to(device)


def sam_bridge(size: int) -> InputBridge:
    return InputBridge(channels=3, size=(size, size), scale="unit", value_range=255.0, mean=SAM_PIXEL_MEAN,
                       std=SAM_PIXEL_STD)


def medsam_bridge(size: int) -> InputBridge:
    return InputBridge(channels=3, size=(size, size), scale="unit", value_range=1.0)


@register_teacher("sam", options=DEFAULTS)
def build_sam(path: str, options: dict, fold=None, device="cpu", **_) -> SamEncoderTeacher:
    """Segment Anything's ViT image encoder (sam_vit_{b,l,h}_*.pth); 2D, features only."""
    return build_sam_teacher("sam", path, options, device, "sam_vit_b_01ec64.pth", sam_bridge)


@register_teacher("medsam", options=DEFAULTS)
def build_medsam(path: str, options: dict, fold=None, device="cpu", **_) -> SamEncoderTeacher:
    """MedSAM's ViT-B image encoder (medsam_vit_b.pth), SAM fine-tuned on medical images; 2D, features only."""
    return build_sam_teacher("medsam", path, options, device, "medsam_vit_b.pth", medsam_bridge)
