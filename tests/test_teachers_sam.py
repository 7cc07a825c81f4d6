"""sam, medsam and sam-med3d teachers: tiny random models saved in the published checkpoint layouts, loaded
through the registry, run on 2D and 3D patches; the bridges; the 3D encoder against segment-anything's 2D
reference; and the errors a user gets for bad specs and files."""

import argparse
import sys
from functools import partial

import pytest
import torch
from helpers.teacher_checks import check_teacher_and_kd_step
from helpers.tiny_teachers import randomize, save_sam_checkpoint, tiny_sam_encoder
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Attention, Block
from torch import nn

from nnkd.errors import NnkdError
from nnkd.teachers import sam_med3d
from nnkd.teachers.registry import create_teacher
from nnkd.teachers.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD, vit_geometry

# Parameters of SAM-Med3D's published encoder (sam_med3d_turbo.pth, ImageEncoderViT3D of
# build_sam3D_vit_b_ori in uni-medical/SAM-Med3D segment_anything/), by name and shape.
SAM_MED3D_PUBLISHED = {
    "patch_embed.proj.weight": (768, 1, 16, 16, 16), "patch_embed.proj.bias": (768,),
    "pos_embed": (1, 8, 8, 8, 768),
    "blocks.0.norm1.weight": (768,), "blocks.0.attn.qkv.weight": (2304, 768), "blocks.0.attn.qkv.bias": (2304,),
    "blocks.0.attn.proj.weight": (768, 768), "blocks.0.attn.rel_pos_d": (27, 64), "blocks.0.attn.rel_pos_h": (27, 64),
    "blocks.0.attn.rel_pos_w": (27, 64), "blocks.0.mlp.lin1.weight": (3072, 768), "blocks.0.mlp.lin2.bias": (768,),
    "blocks.2.attn.rel_pos_d": (15, 64), "blocks.11.norm2.bias": (768,),
    "neck.0.weight": (384, 768, 1, 1, 1), "neck.1.weight": (384,), "neck.1.bias": (384,),
    "neck.2.weight": (384, 384, 3, 3, 3), "neck.3.weight": (384,), "neck.3.bias": (384,),
}
SAM_MED3D_PUBLISHED_KEYS = 3 + 12 * 15 + 6  # patch embedding and pos_embed, 15 per block, the neck's 6


def tiny_geometry_3d():
    """Width 32, depth 2, 2 heads, 32³ input (2³ tokens), windows of 14 as published, block 1 global."""
    state = {"patch_embed.proj.weight": torch.empty(32, 1, 16, 16, 16), "pos_embed": torch.empty(1, 2, 2, 2, 32),
             "blocks.0.attn.rel_pos_h": torch.empty(27, 16), "blocks.1.attn.rel_pos_h": torch.empty(3, 16),
             "blocks.0.mlp.lin1.weight": torch.empty(64, 32), "neck.0.weight": torch.empty(24, 32, 1, 1, 1),
             "blocks.0.attn.qkv.bias": torch.empty(96)}
    return vit_geometry(state, "tiny", "sam-med3d", 3)


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    encoder = tiny_sam_encoder()
    return encoder, save_sam_checkpoint(encoder, tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth")


@pytest.fixture(scope="module")
def sam_med3d_file(tmp_path_factory):
    """As train.py saves sam_med3d_turbo.pth: the Sam3D state dict under model_state_dict, beside args."""
    encoder = randomize(sam_med3d.ImageEncoderViT3D(tiny_geometry_3d()))
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["prompt_encoder.point_embeddings.0.weight"] = torch.zeros(1, 24)
    path = tmp_path_factory.mktemp("sam_med3d") / "sam_med3d_turbo.pth"
    torch.save({"epoch": 200, "model_state_dict": state, "args": argparse.Namespace(model_type="vit_b_ori")}, path)
    return encoder, str(path)


@pytest.mark.parametrize("family", ["sam", "medsam"])
def test_2d_families_serve_2d_and_3d_patches_with_bounded_slices(family, sam_file):
    encoder, path = sam_file
    teacher = create_teacher(f"{family}:{path}")
    assert teacher.feature_channels == [32, 16] and teacher.feature_strides == [(16, 16)] * 2
    assert teacher.describe()["blocks"] == [1] and teacher.checkpoint_sha256
    torch.manual_seed(1)
    assert check_teacher_and_kd_step(teacher, torch.randn(1, 1, 24, 24)) == [(1, 32, 4, 4), (1, 16, 4, 4)]
    assert [s[2] for s in check_teacher_and_kd_step(teacher, torch.randn(1, 1, 12, 24, 24))] == [8, 8]

    bounded = create_teacher(f"{family}:{path}?slices=4&blocks=0,2")
    assert bounded.feature_channels == [32, 32, 16]
    shapes = check_teacher_and_kd_step(bounded, torch.randn(1, 1, 12, 24, 24))
    assert shapes == [(1, 32, 4, 4, 4)] * 2 + [(1, 16, 4, 4, 4)]

    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(teacher.encode(images)[-1], encoder(images), atol=1e-5)


def test_bridges_give_each_model_its_own_input_range(sam_file):
    patch = torch.randn(1, 1, 64, 64) * 3 + 1
    sam_input = create_teacher(f"sam:{sam_file[1]}").bridge(patch)
    mean, std = torch.tensor(SAM_PIXEL_MEAN), torch.tensor(SAM_PIXEL_STD)
    assert sam_input.shape == (1, 3, 64, 64)
    assert torch.allclose(sam_input.amin((0, 2, 3)), -mean / std, atol=1e-5)
    assert torch.allclose(sam_input.amax((0, 2, 3)), (255 - mean) / std, atol=1e-4)
    medsam_input = create_teacher(f"medsam:{sam_file[1]}").bridge(torch.randn(2, 1, 24, 24))
    assert medsam_input.shape == (2, 3, 64, 64) and medsam_input.min() >= 0 and medsam_input.max() <= 1


@pytest.mark.parametrize("variant, embed, depth, heads, globals_", [
    ("vit_b", 768, 12, 12, (2, 5, 8, 11)), ("vit_h", 1280, 32, 16, (7, 15, 23, 31))])
def test_published_sam_shapes_are_read_from_the_weights(variant, embed, depth, heads, globals_):
    with torch.device("meta"):
        encoder = ImageEncoderViT(embed_dim=embed, depth=depth, num_heads=heads, use_rel_pos=True, window_size=14,
                                  global_attn_indexes=globals_)
    geometry = vit_geometry(encoder.state_dict(), variant, "sam", 2)
    assert (geometry.img_size, geometry.patch_size, geometry.num_heads, geometry.window_size) == (1024, 16, heads, 14)
    assert geometry.global_blocks == globals_ and geometry.out_chans == 256 and geometry.mlp_hidden == 4 * embed


def test_sam_med3d_teacher_on_a_3d_patch(sam_med3d_file):
    encoder, path = sam_med3d_file
    teacher = create_teacher(f"sam-med3d:{path}")
    assert teacher.serves_dims == (3,) and teacher.feature_channels == [32, 24]
    assert teacher.feature_strides == [(16, 16, 16)] * 2 and teacher.describe()["input_size"] == [32, 32, 32]
    torch.manual_seed(2)
    assert check_teacher_and_kd_step(teacher, torch.randn(1, 1, 16, 16, 16)) == [(1, 32, 2, 2, 2), (1, 24, 2, 2, 2)]

    volume = torch.randn(1, 1, 32, 32, 32)  # the model's own size: only the axis order changes on the way
    with torch.no_grad():
        expected = encoder(volume.permute(0, 1, 4, 3, 2))[-1].permute(0, 1, 4, 3, 2)
        assert torch.allclose(teacher(volume).features[-1], expected, atol=1e-5)
    assert create_teacher(f"sam-med3d:{path}?blocks=0").feature_channels == [32, 24]


def test_sam_med3d_encoder_has_the_published_parameters():
    with torch.device("meta"):
        published = sam_med3d.ImageEncoderViT3D(vit_geometry(
            {k: torch.empty(s, device="meta") for k, s in SAM_MED3D_PUBLISHED.items()}
            | {f"blocks.{i}.attn.rel_pos_h": torch.empty(15 if i in (2, 5, 8, 11) else 27, 64, device="meta")
               for i in range(12)}, "published", "sam-med3d", 3))
    state = published.state_dict()
    assert len(state) == SAM_MED3D_PUBLISHED_KEYS
    assert {k: tuple(state[k].shape) for k in SAM_MED3D_PUBLISHED} == SAM_MED3D_PUBLISHED
    assert [b.window for b in published.blocks] == [0 if i in (2, 5, 8, 11) else 14 for i in range(12)]


def test_3d_attention_and_block_reduce_to_segment_anythings_2d_ones():
    """On a grid one token deep the depth term is the same for every key, so softmax ignores it and the 3D
    modules must equal segment-anything's 2D Attention and Block (the reference for indexes and axes)."""
    reference = randomize(Block(32, num_heads=2, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                input_size=(4, 4)))
    block = sam_med3d.Block3D(32, heads=2, mlp_hidden=128, qkv_bias=True, window=0, grid=4)
    state = reference.state_dict() | {"attn.rel_pos_d": torch.randn(7, 16)}
    block.load_state_dict(state)
    tokens = torch.randn(2, 4, 4, 32)
    with torch.no_grad():
        assert torch.allclose(block(tokens[:, None])[:, 0], reference(tokens), atol=1e-5)
        # the other way round: one token high, so rel_pos_d must play the 2D model's rel_pos_h
        attention = sam_med3d.RelPosAttention3D(32, heads=2, grid=4, qkv_bias=True)
        attention.load_state_dict({k.removeprefix("attn."): v for k, v in state.items() if k.startswith("attn.")})
        reference_2d = Attention(32, num_heads=2, use_rel_pos=True, input_size=(4, 4))
        reference_2d.load_state_dict(reference.attn.state_dict() | {"rel_pos_h": state["attn.rel_pos_d"]})
        assert torch.allclose(attention(tokens[:, :, None])[:, :, 0], reference_2d(tokens), atol=1e-5)


def test_window_partition_round_trip_with_padding():
    tokens = torch.randn(2, 5, 6, 7, 4)
    windows, padded = sam_med3d.window_partition(tokens, 3)
    assert windows.shape == (2 * 2 * 2 * 3, 3, 3, 3, 4) and padded == (6, 6, 9)
    assert torch.equal(sam_med3d.window_merge(windows, 3, padded, (5, 6, 7)), tokens)


@pytest.mark.parametrize("spec_suffix, message", [
    ("?colour=red", "unknown option(s) colour"), ("?slices=0", "slices=0"), ("?blocks=7", "out of range"),
    ("?variant=vit_l", "not vit_l"), ("?variant=vit_x", "unknown sam variant")])
def test_bad_options_are_clear_errors(sam_file, spec_suffix, message):
    with pytest.raises(NnkdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_teacher(f"sam:{sam_file[1]}{spec_suffix}")


@pytest.mark.parametrize("family", ["sam", "medsam", "sam-med3d"])
def test_bad_paths_and_files_are_clear_errors(family, tmp_path, sam_file, sam_med3d_file):
    with pytest.raises(NnkdError, match=f"the {family} teacher needs a checkpoint path"):
        create_teacher(family)
    with pytest.raises(NnkdError, match="not found"):
        create_teacher(f"{family}:{tmp_path / 'missing.pth'}")
    torch.save({"model_state_dict": {"mask_decoder.iou_token.weight": torch.zeros(1)}}, tmp_path / "decoder.pth")
    with pytest.raises(NnkdError, match="holds no image_encoder"):
        create_teacher(f"{family}:{tmp_path / 'decoder.pth'}")
    own, other = (sam_med3d_file[1], sam_file[1]) if family == "sam-med3d" else (sam_file[1], sam_med3d_file[1])
    with pytest.raises(NnkdError, match="image encoder, the .* teacher takes a"):
        create_teacher(f"{family}:{other}")
    state = torch.load(own, weights_only=False)
    state = state.get("model_state_dict", state)
    del state["image_encoder.blocks.0.attn.qkv.weight"]
    torch.save(state, tmp_path / "damaged.pth")
    with pytest.raises(NnkdError, match="does not fit"):
        create_teacher(f"{family}:{tmp_path / 'damaged.pth'}")


def test_missing_segment_anything_says_what_to_install(sam_file, monkeypatch):
    for module in ("segment_anything", "segment_anything.modeling"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(NnkdError, match="needs the segment-anything package"):
        create_teacher(f"sam:{sam_file[1]}")
