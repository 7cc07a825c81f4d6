"""SAM-Med3D's 3D ViT image encoder as a feature teacher, loaded from the published sam_med3d_turbo.pth.

No package ships the encoder, so it is written here, with the parameter names and shapes of
uni-medical/SAM-Med3D's segment_anything/modeling/image_encoder3D.py (ImageEncoderViT3D as built by
build_sam3D_vit_b_ori: input 128³, patch 16, width 768, depth 12, 12 heads, windows of 14 with global
attention in blocks 2, 5, 8, 11, decomposed 3D relative positions, a neck to 384 channels with
channel-wise LayerNorms). Its forward does what the original does: a window block zero-pads the token
grid to a multiple of the window (8³ tokens become one 14³ window) and attends over the padding too.
The checkpoint is train.py's dict whose `model_state_dict` holds the whole Sam3D (a plain state dict is
accepted as well); the shape is read from the weights as for `sam`.

Preprocessing, from SAM-Med3D's train.py and utils/infer_utils.py: torchio reads the image, so the
tensor axes are (x, y, z) where nnU-Net's are (z, y, x) — the bridge reverses the axes and the features
are reversed back (flips need no care: training used RandomFlip on all axes); intensities are
z-scored (tio.ZNormalization over voxels > 0, CT clamped to [-1000, 1000] first), the same kind of
normalization nnU-Net gives the student, so the bridge keeps them (scale "none") and only resizes the
patch to the model's 128³.

Options: `blocks` (indexes of the blocks whose outputs become stages; default the global-attention
blocks).
"""

import torch
import torch.nn.functional as F
from torch import nn

from nnkd.teachers import sam
from nnkd.teachers.base import Teacher, TeacherOutput
from nnkd.teachers.bridge import InputBridge
from nnkd.teachers.registry import register_teacher

DEFAULTS = {"blocks": ()}


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(N, D, H, W, C) zero-padded to multiples of `window` and cut into (N·windows, w, w, w, C)."""
    n, *size, channels = x.shape
    pads = [(-s) % window for s in size]
    x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
    padded = tuple(s + p for s, p in zip(size, pads))
    d, h, w = (s // window for s in padded)
    x = x.view(n, d, window, h, window, w, window, channels).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(-1, window, window, window, channels), padded


def window_merge(windows: torch.Tensor, window: int, padded: tuple[int, int, int],
                 size: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of window_partition, padding cropped."""
    d, h, w = (s // window for s in padded)
    n = windows.shape[0] // (d * h * w)
    x = windows.view(n, d, h, w, window, window, window, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(n, *padded, -1)[:, : size[0], : size[1], : size[2]]


class LayerNorm3d(nn.Module):
    """LayerNorm over the channels of (N, C, D, H, W), as the neck normalizes."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.movedim(1, -1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.movedim(-1, 1)


class RelPosAttention3D(nn.Module):
    """Multi-head self-attention over a (D, H, W) token grid with MViTv2's decomposed relative positions:
    the logit of query i and key j gains q_i · (R_d[d_i − d_j] + R_h[h_i − h_j] + R_w[w_i − w_j])."""

    def __init__(self, dim: int, heads: int, grid: int, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * grid - 1, dim // heads))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, dim // heads))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, dim // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, *size, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, -1, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.relative_position_bias(q, size))
        return self.proj(out.transpose(1, 2).reshape(n, *size, dim))

    def relative_position_bias(self, q: torch.Tensor, size: list[int]) -> torch.Tensor:
        """(N, heads, tokens, tokens) logit offsets; the tables have 2·grid − 1 rows for the grid they see."""
        n, heads, tokens, head_dim = q.shape
        q = q.reshape(n, heads, *size, head_dim)
        per_axis = []
        for table, length in zip((self.rel_pos_d, self.rel_pos_h, self.rel_pos_w), size):
            offsets = torch.arange(length, device=q.device)
            per_axis.append(table[offsets[:, None] - offsets[None, :] + length - 1])  # (query, key, head_dim)
        along_d = torch.einsum("bndhwc,dkc->bndhwk", q, per_axis[0])[..., :, None, None]
        along_h = torch.einsum("bndhwc,hkc->bndhwk", q, per_axis[1])[..., None, :, None]
        along_w = torch.einsum("bndhwc,wkc->bndhwk", q, per_axis[2])[..., None, None, :]
        return (along_d + along_h + along_w).reshape(n, heads, tokens, tokens).to(q.dtype)


class Block3D(nn.Module):
    """Pre-norm transformer block; attention within zero-padded windows, or global when `window` is 0."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, qkv_bias: bool, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention3D(dim, heads, window or grid, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.ModuleDict({"lin1": nn.Linear(dim, mlp_hidden), "lin2": nn.Linear(mlp_hidden, dim)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window:
            windows, padded = window_partition(y, self.window)
            y = window_merge(self.attn(windows), self.window, padded, x.shape[1:4])
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp["lin2"](F.gelu(self.mlp["lin1"](self.norm2(x))))


class ImageEncoderViT3D(nn.Module):
    """SAM-Med3D's image encoder, parameter for parameter; forward returns chosen block outputs and the
    neck's embedding, all (N, C, d, h, w), for an input of exactly img_size³."""

    def __init__(self, geometry: sam.ViTGeometry):
        super().__init__()
        g = geometry
        grid = g.img_size // g.patch_size
        self.patch_embed = nn.ModuleDict({"proj": nn.Conv3d(g.in_chans, g.embed_dim, g.patch_size, g.patch_size)})
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, g.embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(g.embed_dim, g.num_heads, g.mlp_hidden, g.qkv_bias, 0 if i in g.global_blocks else g.window_size,
                    grid) for i in range(g.depth))
        self.neck = nn.Sequential(nn.Conv3d(g.embed_dim, g.out_chans, 1, bias=False), LayerNorm3d(g.out_chans),
                                  nn.Conv3d(g.out_chans, g.out_chans, 3, padding=1, bias=False),
                                  LayerNorm3d(g.out_chans))

    def forward(self, x: torch.Tensor, stage_blocks: tuple[int, ...] = ()) -> list[torch.Tensor]:
        x = self.patch_embed["proj"](x).permute(0, 2, 3, 4, 1) + self.pos_embed  # channels-last tokens
        stages = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in stage_blocks:
                stages.append(x.permute(0, 4, 1, 2, 3))
        return stages + [self.neck(x.permute(0, 4, 1, 2, 3))]


class SamMed3DTeacher(Teacher):
    spatial_dims = 3
    in_channels = 1
    lora_targets = ("attn.qkv", "attn.proj")

    def __init__(self, encoder: ImageEncoderViT3D, blocks: tuple[int, ...], geometry: sam.ViTGeometry):
        super().__init__()
        self.encoder = encoder
        self.stage_blocks = blocks
        self.bridge = InputBridge(channels=1, size=(geometry.img_size,) * 3, scale="none")
        self.feature_channels = [geometry.embed_dim] * len(blocks) + [geometry.out_chans]
        self.feature_strides = [(geometry.patch_size,) * 3] * (len(blocks) + 1)

    def forward(self, x: torch.Tensor) -> TeacherOutput:
        xyz = x.permute(0, 1, 4, 3, 2)  # nnU-Net's (z, y, x) to torchio's (x, y, z)
        features = self.encoder(self.bridge(xyz), self.stage_blocks)
        return TeacherOutput([f.permute(0, 1, 4, 3, 2) for f in features], None)

    def describe(self) -> dict:
        return super().describe() | {"input_size": list(self.bridge.size), "blocks": list(self.stage_blocks)}


@register_teacher("sam-med3d", options=DEFAULTS)
def build_sam_med3d(path: str, options: dict, fold=None, device="cpu", **_) -> SamMed3DTeacher:
    """SAM-Med3D's 3D ViT image encoder (sam_med3d_turbo.pth) at 128³; 3D, features only."""
    state = sam.image_encoder_state(path, "sam-med3d", "sam_med3d_turbo.pth")
    geometry = sam.vit_geometry(state, path, "sam-med3d", 3)
    encoder = ImageEncoderViT3D(geometry)
    sam.load_encoder_weights(encoder, state, path)
    teacher = SamMed3DTeacher(encoder, sam.stage_blocks(options["blocks"], geometry, "sam-med3d"), geometry)
    teacher.set_checkpoint(path)
    return teacher.to(device)
