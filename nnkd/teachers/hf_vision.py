"""Hugging Face vision encoders as feature-only teachers: DINOv2, RAD-DINO (DINOv2 continued on chest
X-rays) and Swin, from local folders as `save_pretrained` writes them (config.json + model.safetensors or
pytorch_model.bin). Nothing is ever downloaded.

Options: `size` (input side; rounded to what the model tiles), `slices` (most slices of a 3D patch per
step, default 8) and, for DINOv2 and RAD-DINO, `layers` (1-based transformer layers, default four evenly
spaced ending at the last).

DINOv2 features are the patch tokens (CLS and register tokens dropped) of each chosen layer, each passed
through the model's final LayerNorm: DINOv2's own dense heads (`get_intermediate_layers(norm=True)`) and
transformers' Dinov2Backbone read intermediate layers this way, the normed layers share one scale, and the
last layer is then exactly `last_hidden_state`. Swin features are the four stage outputs before patch
merging (strides 4, 8, 16, 32); the last one through the final LayerNorm, as in `last_hidden_state`.
"""

import json
import pickle
from pathlib import Path

import torch

from nnkd.errors import NnkdError
from nnkd.teachers.bridge import IMAGENET_MEAN, IMAGENET_STD, InputBridge
from nnkd.teachers.image_encoder import ImageEncoderTeacher
from nnkd.teachers.registry import register_teacher

RAD_DINO_MEAN = 0.5307  # microsoft/rad-dino preprocessor_config.json, the same for all three channels
RAD_DINO_STD = 0.2583
DINOV2_TYPES = ("dinov2", "dinov2_with_registers")
SWIN_TYPES = ("swin",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def require_transformers(family: str):
    try:
        import transformers
    except ImportError as e:
        raise NnkdError(f"the {family} teacher needs the transformers package", "pip install 'nnkd[teachers]'") from e
    return transformers


def check_options(family: str, options: dict) -> None:
    """What the registry's option parsing cannot tell from the types alone."""
    for key in ("size", "slices"):
        if options[key] < 1:
            raise NnkdError(f"option {key}={options[key]} of {family} teacher must be at least 1",
                            f"e.g. {key}=8" if key == "slices" else "leave size out for the model's native size")


def open_hf_folder(family: str, path: str, model_types: tuple[str, ...], example: str, transformers):
    """The folder's config and weights file, after checking it holds a model of one of `model_types`."""
    folder = Path(path).expanduser()
    remedy = f"point {family}: to a local Hugging Face model folder (config.json and weights), e.g. {example}"
    if not folder.is_dir():
        raise NnkdError(f"{family} teacher folder '{path}' not found", remedy)
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except FileNotFoundError as e:
        raise NnkdError(f"{folder} holds no config.json", remedy) from e
    except (ValueError, AttributeError) as e:
        raise NnkdError(f"{folder / 'config.json'} is not a Hugging Face model config", remedy) from e
    if model_type not in model_types:
        raise NnkdError(f"{folder / 'config.json'} describes a '{model_type}' model, not {' or '.join(model_types)}",
                        f"the {family} teacher takes a {model_types[0]} folder such as {example}")
    weights = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise NnkdError(f"{folder} holds no weights ({' or '.join(WEIGHT_FILES[::2])})",
                        f"copy the complete {example} folder")
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise NnkdError(f"cannot read {folder / 'config.json'}: {str(e).strip().splitlines()[0][:200]}", remedy) from e
    return folder, config, weights


def load_hf_model(family: str, folder: Path, config, transformers) -> torch.nn.Module:
    """The base model (any task head in the folder is left out), in float32 whatever the saved dtype."""
    try:
        model, info = transformers.AutoModel.from_pretrained(str(folder), config=config, local_files_only=True,
                                                             ignore_mismatched_sizes=True, output_loading_info=True)
    except pickle.UnpicklingError as e:  # torch.load(weights_only=True) refused pickled code in pytorch_model.bin
        raise NnkdError(f"the weights in {folder} carry pickled code or objects, which nnkd does not run",
                        "use the model's safetensors weights, or re-save it with save_pretrained") from e
    except (OSError, ValueError, RuntimeError) as e:
        raise NnkdError(f"cannot load the {family} model in {folder}: {str(e).strip().splitlines()[0][:200]}",
                        "restore the folder from its source") from e
    broken = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
    if broken:
        raise NnkdError(f"the weights in {folder} do not fit its config.json ({len(broken)} tensors missing or "
                        f"of another shape, e.g. {broken[0]})", "restore the folder from its source")
    return model.float()


def evenly_spaced_layers(depth: int, count: int = 4) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(depth * (i + 1) / count)) for i in range(count)}))


def swin_input_side(family: str, size: int, config) -> int:
    """`size` rounded to a multiple of the total stride; every last-stage window must fit in the image
    (transformers' Swin fails on smaller inputs)."""
    total_stride = config.patch_size * 2 ** (len(config.depths) - 1)
    side = max(1, round(size / total_stride)) * total_stride
    if side < total_stride * config.window_size:
        raise NnkdError(f"size={size} is too small for this {family} model ({config.window_size}×{config.window_size} "
                        f"windows at stride {total_stride})", f"use size={total_stride * config.window_size} or more")
    return side


# Attention projections of DINOv2 and Swin for LoRA: transformers 5 names (q_proj … o_proj), then 4's.
HF_ATTENTION_PROJECTIONS = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                            "query", "key", "value", "attention.output.dense")


class DinoV2Teacher(ImageEncoderTeacher):
    """Patch-token maps of chosen DINOv2 layers, all at the patch stride."""

    lora_targets = HF_ATTENTION_PROJECTIONS

    def __init__(self, model: torch.nn.Module, bridge: InputBridge, layers: tuple[int, ...], max_slices: int):
        patch = model.config.patch_size
        super().__init__(bridge, [model.config.hidden_size] * len(layers), [(patch, patch)] * len(layers), max_slices)
        self.model = model
        self.layers = layers
        self.prefix_tokens = 1 + getattr(model.config, "num_register_tokens", 0)  # CLS, then registers

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        hidden_states = self.model(pixel_values=images, output_hidden_states=True).hidden_states
        patch = self.feature_strides[0][0]
        rows, cols = images.shape[-2] // patch, images.shape[-1] // patch
        return [self.model.layernorm(hidden_states[layer][:, self.prefix_tokens:]).transpose(1, 2)
                .reshape(len(images), -1, rows, cols) for layer in self.layers]


class SwinTeacher(ImageEncoderTeacher):
    """The hierarchical stage maps of a Swin transformer."""

    lora_targets = HF_ATTENTION_PROJECTIONS

    def __init__(self, model: torch.nn.Module, bridge: InputBridge, max_slices: int):
        config = model.config
        stages = range(len(config.depths))
        super().__init__(bridge, [config.embed_dim * 2 ** i for i in stages],
                         [(config.patch_size * 2 ** i,) * 2 for i in stages], max_slices)
        self.model = model

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        embedded, grid = self.model.embeddings(images)
        encoded = self.model.encoder(embedded, grid, output_hidden_states=True,
                                     output_hidden_states_before_downsampling=True)
        stages = list(encoded.reshaped_hidden_states[1:])  # [0] is the patch embedding
        last = self.model.layernorm(encoded.last_hidden_state)
        stages[-1] = last.transpose(1, 2).reshape(stages[-1].shape)
        return stages


def build_dinov2_family(family: str, path: str, options: dict, device, mean: tuple, std: tuple,
                        example: str) -> DinoV2Teacher:
    transformers = require_transformers(family)
    folder, config, weights = open_hf_folder(family, path, DINOV2_TYPES, example, transformers)
    depth = config.num_hidden_layers
    default_layers = evenly_spaced_layers(depth)
    check_options(family, options)
    layers = options["layers"] or default_layers
    if not all(1 <= layer <= depth for layer in layers):
        raise NnkdError(f"option layers={','.join(map(str, layers))} of {family} teacher is not within 1..{depth} "
                        f"(the model has {depth} layers)", f"e.g. layers={','.join(map(str, default_layers))}")
    patch = config.patch_size
    side = max(1, round(options["size"] / patch)) * patch
    bridge = InputBridge(channels=3, size=(side, side), scale="unit", mean=mean, std=std)
    teacher = DinoV2Teacher(load_hf_model(family, folder, config, transformers), bridge, layers, options["slices"])
    teacher.set_checkpoint(weights)
    return teacher.to(device)


@register_teacher("dinov2", options={"size": 224, "slices": 8, "layers": ()})
def build_dinov2(path: str, options: dict, fold=None, device="cpu", **_) -> DinoV2Teacher:
    """A DINOv2 folder (e.g. facebook/dinov2-base): 4 layers' patch tokens, stride 14, ImageNet norm at 224²."""
    return build_dinov2_family("dinov2", path, options, device, IMAGENET_MEAN, IMAGENET_STD,
                               "facebook/dinov2-base")


@register_teacher("rad-dino", options={"size": 518, "slices": 8, "layers": ()})
def build_rad_dino(path: str, options: dict, fold=None, device="cpu", **_) -> DinoV2Teacher:
    """The microsoft/rad-dino folder: 4 layers' patch tokens, stride 14, its own norm at 518² (a 37×37 grid)."""
    return build_dinov2_family("rad-dino", path, options, device, (RAD_DINO_MEAN,) * 3, (RAD_DINO_STD,) * 3,
                               "microsoft/rad-dino")


@register_teacher("swin", options={"size": 224, "slices": 8})
def build_swin(path: str, options: dict, fold=None, device="cpu", **_) -> SwinTeacher:
    """A Swin folder (e.g. microsoft/swin-tiny-patch4-window7-224): 4 stages, strides 4–32, ImageNet norm at 224²."""
    transformers = require_transformers("swin")
    folder, config, weights = open_hf_folder("swin", path, SWIN_TYPES, "microsoft/swin-tiny-patch4-window7-224",
                                             transformers)
    check_options("swin", options)
    side = swin_input_side("swin", options["size"], config)
    bridge = InputBridge(channels=3, size=(side, side), scale="unit", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    teacher = SwinTeacher(load_hf_model("swin", folder, config, transformers), bridge, options["slices"])
    teacher.set_checkpoint(weights)
    return teacher.to(device)
