"""Tiny randomly initialised teachers in published checkpoint layouts, shared by several test files."""

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn


def randomize(module: nn.Module) -> nn.Module:
    """Non-zero relative positions and norms too, so a wrong index or axis shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module


def tiny_sam_encoder() -> ImageEncoderViT:
    """Width 32, depth 3, 2 heads, 64² input (4² tokens), windows of 2, block 1 global, 16-channel neck."""
    return randomize(ImageEncoderViT(img_size=64, embed_dim=32, depth=3, num_heads=2, out_chans=16,
                                     norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=2,
                                     global_attn_indexes=(1,)))


def save_sam_checkpoint(encoder: nn.Module, path) -> str:
    """As sam_vit_b_01ec64.pth / medsam_vit_b.pth are: the whole Sam's state dict, one flat dict."""
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state |= {"prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 16), "mask_decoder.iou_token.weight":
              torch.zeros(1, 16)}
    torch.save(state, path)
    return str(path)
