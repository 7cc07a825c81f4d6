"""MedCLIP-ViT's vision tower (a Swin-T trained contrastively on chest X-rays and their reports) as a
feature-only teacher, from the published checkpoint: the `pytorch_model.bin` of MedCLIP's
`medclip-vit-pretrained` download, a state dict of the whole MedCLIPModel whose vision keys are
`vision_model.model.<SwinModel keys>` (beside `vision_model.projection_head.weight`, the text tower
`text_model.*` and `logit_scale`, none of which a feature teacher needs).

MedCLIP builds that Swin with AutoModel.from_pretrained('microsoft/swin-tiny-patch4-window7-224'); here its
configuration is read off the checkpoint's tensor shapes instead, so nothing is downloaded. Input: MedCLIP's
own grayscale normalization (constants.IMG_MEAN / IMG_STD) at 224×224, the image repeated to 3 channels as
MedCLIP does. Features and options (`size`, `slices`) as for the swin family.
"""

import math
import re
from pathlib import Path

from nnkd.errors import NnkdError
from nnkd.teachers.bridge import InputBridge
from nnkd.checkpoints import load_checkpoint
from nnkd.teachers.hf_vision import (
    SwinTeacher,
    check_options,
    require_transformers,
    swin_input_side,
)
from nnkd.teachers.registry import register_teacher

MEDCLIP_MEAN = 0.5862785803043838  # medclip/constants.py IMG_MEAN and IMG_STD
MEDCLIP_STD = 0.27950088968644304
VISION_PREFIX = "vision_model.model."
WEIGHTS_NAME = "pytorch_model.bin"
WHERE = "point medclip: to MedCLIP-ViT's medclip-vit-pretrained folder or the pytorch_model.bin in it"


def swin_config_from_state(state: dict, transformers):
    """Every Swin hyper-parameter that shapes a tensor, read off the tensors: the patch embedding (width,
    channels, patch size), blocks per stage, relative position tables ((2·window − 1)² × heads) and MLP width.
    Works with transformers 4 names (attention.self.query, intermediate.dense) and 5 names (q_proj, mlp.fc1)."""
    projection = state["embeddings.patch_embeddings.projection.weight"]
    blocks: dict[int, int] = {}
    for key in state:
        if match := re.match(r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.", key):
            stage, block = int(match[1]), int(match[2])
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    depths = [blocks[stage] for stage in range(len(blocks))]
    tables = [next(tensor for key, tensor in state.items() if key.startswith(f"encoder.layers.{stage}.blocks.0.")
                   and key.endswith("relative_position_bias_table")) for stage in range(len(depths))]
    mlp_width = next(tensor for key, tensor in state.items() if key.startswith("encoder.layers.0.blocks.0.")
                     and key.endswith(("intermediate.dense.weight", "mlp.fc1.weight"))).shape[0]
    return transformers.SwinConfig(
        patch_size=projection.shape[-1], num_channels=projection.shape[1], embed_dim=projection.shape[0],
        depths=depths, num_heads=[table.shape[1] for table in tables],
        window_size=(math.isqrt(tables[0].shape[0]) + 1) // 2, mlp_ratio=mlp_width / projection.shape[0],
        qkv_bias=any(key.endswith(("query.bias", "q_proj.bias")) for key in state))


@register_teacher("medclip", options={"size": 224, "slices": 8})
def build_medclip(path: str, options: dict, fold=None, device="cpu", **_) -> SwinTeacher:
    """MedCLIP-ViT's pytorch_model.bin (or its folder): Swin-T's 4 stages, strides 4–32, its own norm at 224²."""
    transformers = require_transformers("medclip")
    check_options("medclip", options)
    weights = Path(path).expanduser()
    weights = weights / WEIGHTS_NAME if weights.is_dir() else weights
    if not weights.is_file():
        raise NnkdError(f"MedCLIP checkpoint {weights} not found", WHERE)
    state = load_checkpoint(weights)
    vision = {key[len(VISION_PREFIX):]: tensor for key, tensor in state.items() if key.startswith(VISION_PREFIX)}
    if "conv1.weight" in vision:
        raise NnkdError(f"{weights} is MedCLIP-ResNet; the medclip teacher takes MedCLIP-ViT (Swin)", WHERE)
    try:
        config = swin_config_from_state(vision, transformers)
    except (KeyError, StopIteration, IndexError) as e:
        raise NnkdError(f"{weights} holds no MedCLIP-ViT vision tower ({VISION_PREFIX}* Swin weights)", WHERE) from e
    side = swin_input_side("medclip", options["size"], config)
    config.image_size = side
    try:
        model, info = transformers.SwinModel.from_pretrained(None, config=config, state_dict=vision,
                                                             ignore_mismatched_sizes=True, output_loading_info=True)
    except (ValueError, RuntimeError) as e:
        raise NnkdError(f"cannot load the Swin in {weights}: {str(e).strip().splitlines()[0][:200]}", WHERE) from e
    broken = sorted(info["missing_keys"]) + sorted(info["unexpected_keys"]) + sorted(map(str, info["mismatched_keys"]))
    if broken:
        raise NnkdError(f"the Swin weights in {weights} are not a complete SwinModel ({len(broken)} tensors missing, "
                        f"unexpected or of another shape, e.g. {broken[0]})", WHERE)
    bridge = InputBridge(channels=3, size=(side, side), scale="unit", mean=(MEDCLIP_MEAN,) * 3, std=(MEDCLIP_STD,) * 3)
    teacher = SwinTeacher(model.float(), bridge, options["slices"])
    teacher.set_checkpoint(weights)
    return teacher.to(device)
