"""DINOv2, RAD-DINO, Swin and MedCLIP teachers on tiny random models saved the way their publishers ship them."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from helpers.teacher_checks import check_teacher_and_kd_step

from nnkd.errors import NnkdError
from nnkd.teachers.bridge import unit_range
from nnkd.teachers.registry import create_teacher

transformers = pytest.importorskip("transformers")

PATCH_3D = (1, 1, 12, 24, 24)
PATCH_2D = (1, 1, 24, 24)
# transformers 5 renamed Swin's tensors; MedCLIP's checkpoint has the transformers 4 names (with the index buffers)
SWIN_NAMES_OF_TRANSFORMERS_4 = {
    "attention.relative_position_bias.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attention.relative_position_bias.relative_position_index": "attention.self.relative_position_index",
    "attention.q_proj": "attention.self.query", "attention.k_proj": "attention.self.key",
    "attention.v_proj": "attention.self.value", "attention.o_proj": "attention.output.dense",
    "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def tiny_dinov2(**overrides):
    config = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
              "patch_size": 14, "image_size": 28}
    return transformers.Dinov2Model(transformers.Dinov2Config(**config | overrides)).eval()


def tiny_swin_config():
    return transformers.SwinConfig(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 1, 2, 2], window_size=2,
                                   image_size=64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each family's checkpoint as users have it: HF folders (Swin's with its ImageNet classifier, as
    microsoft/swin-tiny-patch4-window7-224), and MedCLIP's whole-model pytorch_model.bin."""
    root = tmp_path_factory.mktemp("hf_teachers")
    torch.manual_seed(0)
    dinov2 = tiny_dinov2()
    swin_classifier = transformers.SwinForImageClassification(tiny_swin_config()).eval()
    medclip_swin = transformers.SwinModel(tiny_swin_config()).eval()
    dinov2.save_pretrained(root / "dinov2")
    swin_classifier.save_pretrained(root / "swin")
    state = {}
    for key, tensor in (dict(medclip_swin.named_buffers()) | medclip_swin.state_dict()).items():
        for new, old in SWIN_NAMES_OF_TRANSFORMERS_4.items():
            key = key.replace(new, old)
        state["vision_model.model." + key] = tensor
    state["vision_model.projection_head.weight"] = torch.randn(16, 64)
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["text_model.projection_head.weight"] = torch.randn(16, 8)
    state["logit_scale"] = torch.tensor(2.6593)
    (root / "medclip-vit-pretrained").mkdir()
    torch.save(state, root / "medclip-vit-pretrained" / "pytorch_model.bin")
    return {"root": root, "dinov2": dinov2, "swin": swin_classifier.swin, "medclip": medclip_swin}


def spec(family, folder, query=""):
    return f"{family}:{folder}{'?' + query if query else ''}"


@pytest.mark.parametrize("family, folder, query, stages", [
    ("dinov2", "dinov2", "size=28&slices=4", [(32, 14)] * 4),
    ("rad-dino", "dinov2", "size=28&slices=4&layers=2,4", [(32, 14)] * 2),
    ("swin", "swin", "size=64&slices=4", [(8, 4), (16, 8), (32, 16), (64, 32)]),
    ("medclip", "medclip-vit-pretrained", "size=64&slices=4", [(8, 4), (16, 8), (32, 16), (64, 32)]),
])
def test_teacher_runs_a_kd_step_on_3d_and_2d_patches(folders, family, folder, query, stages):
    teacher = create_teacher(spec(family, folders["root"] / folder, query))
    assert [(c, s[0]) for c, s in zip(teacher.feature_channels, teacher.feature_strides)] == stages
    assert teacher.checkpoint_sha256 and not teacher.has_logits and teacher.serves_dims == (2, 3)
    shapes = check_teacher_and_kd_step(teacher, torch.randn(PATCH_3D))
    side = teacher.bridge.size[0]
    assert [tuple(s[2:]) for s in shapes] == [(4, side // stride, side // stride) for _, stride in stages]
    shapes = check_teacher_and_kd_step(teacher, torch.randn(PATCH_2D))
    assert [tuple(s[2:]) for s in shapes] == [(side // stride, side // stride) for _, stride in stages]


def test_dinov2_layers_are_normed_patch_tokens_and_the_last_is_last_hidden_state(folders):
    teacher = create_teacher(spec("rad-dino", folders["root"] / "dinov2", "size=28&layers=1,4"))
    images = torch.randn(2, 3, 28, 28)
    first, last = teacher.encode(images)
    with torch.no_grad():
        reference = folders["dinov2"](pixel_values=images, output_hidden_states=True)

    def as_map(tokens):
        return tokens[:, 1:].transpose(1, 2).reshape(2, 32, 2, 2)

    torch.testing.assert_close(last, as_map(reference.last_hidden_state))
    torch.testing.assert_close(first, as_map(folders["dinov2"].layernorm(reference.hidden_states[1])))
    assert create_teacher(spec("dinov2", folders["root"] / "dinov2")).layers == (1, 2, 3, 4)


def test_swin_stages_and_medclip_load_the_published_weights(folders):
    images = torch.randn(2, 3, 64, 64)
    for family, folder, model in [("swin", "swin", folders["swin"]),
                                  ("medclip", "medclip-vit-pretrained/pytorch_model.bin", folders["medclip"])]:
        teacher = create_teacher(spec(family, folders["root"] / folder, "size=64"))
        stages = teacher.encode(images)
        with torch.no_grad():
            reference = model(pixel_values=images, output_hidden_states=True,
                              output_hidden_states_before_downsampling=True)
        for stage, expected in zip(stages[:-1], reference.reshaped_hidden_states[1:-1]):
            torch.testing.assert_close(stage, expected)
        torch.testing.assert_close(stages[-1], reference.last_hidden_state.transpose(1, 2).reshape(2, 64, 2, 2))


@pytest.mark.parametrize("family, mean, std, size", [("rad-dino", 0.5307, 0.2583, 518),
                                                     ("dinov2", 0.485, 0.229, 224), ("swin", 0.485, 0.229, 224),
                                                     ("medclip", 0.5863, 0.2795, 224)])
def test_bridges_follow_each_model_s_published_preprocessing(folders, family, mean, std, size):
    folder = {"rad-dino": "dinov2", "dinov2": "dinov2", "swin": "swin", "medclip": "medclip-vit-pretrained"}[family]
    bridge = create_teacher(spec(family, folders["root"] / folder)).bridge
    assert bridge.size == (size, size) and bridge.channels == 3
    x = torch.randn(2, 1, size, size) * 50 + 10
    expected = (unit_range(x).expand(-1, 3, -1, -1) - mean) / std
    torch.testing.assert_close(bridge(x)[:, 0], expected[:, 0], atol=1e-3, rtol=0)


def test_size_is_rounded_to_what_the_model_tiles(folders):
    assert create_teacher(spec("dinov2", folders["root"] / "dinov2", "size=30")).bridge.size == (28, 28)
    assert create_teacher(spec("swin", folders["root"] / "swin", "size=100")).bridge.size == (96, 96)
    with pytest.raises(NnkdError, match="too small.*size=64 or more"):
        create_teacher(spec("swin", folders["root"] / "swin", "size=32"))


@pytest.mark.parametrize("family, folder, query, message", [
    ("dinov2", "dinov2", "resolution=224", "unknown option.*resolution"),
    ("dinov2", "dinov2", "slices=many", "slices=many.*not an integer"),
    ("dinov2", "dinov2", "slices=0", "slices=0.*at least 1"),
    ("rad-dino", "dinov2", "layers=0,5", r"layers=0,5.*within 1\.\.4"),
    ("medclip", "medclip-vit-pretrained", "layers=1", "unknown option.*layers"),
])
def test_a_bad_option_is_one_clear_error(folders, family, folder, query, message):
    with pytest.raises(NnkdError, match=message):
        create_teacher(spec(family, folders["root"] / folder, query))


def test_a_missing_empty_or_foreign_folder_is_one_clear_error(folders, tmp_path):
    with pytest.raises(NnkdError, match="not found.*Hugging Face model folder"):
        create_teacher(spec("dinov2", tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NnkdError, match="no config.json"):
        create_teacher(spec("rad-dino", tmp_path / "empty"))
    with pytest.raises(NnkdError, match="describes a 'swin' model, not dinov2"):
        create_teacher(spec("dinov2", folders["root"] / "swin"))
    with pytest.raises(NnkdError, match="describes a 'dinov2' model, not swin"):
        create_teacher(spec("swin", folders["root"] / "dinov2"))
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text((folders["root"] / "dinov2" / "config.json").read_text())
    with pytest.raises(NnkdError, match="holds no weights"):
        create_teacher(spec("dinov2", tmp_path / "config_only"))
    with pytest.raises(NnkdError, match="MedCLIP checkpoint .* not found"):
        create_teacher(spec("medclip", tmp_path / "empty"))


def test_weights_that_do_not_fit_the_config_are_an_error(folders, tmp_path):
    tiny_dinov2(hidden_size=16, intermediate_size=32).save_pretrained(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((folders["root"] / "dinov2" / "config.json").read_text())
    with pytest.raises(NnkdError, match="weights in .* do not fit its config.json.*another shape"):
        create_teacher(spec("dinov2", tmp_path / "other"))


def test_medclip_rejects_resnet_and_foreign_checkpoints(tmp_path):
    torch.save({"vision_model.model.conv1.weight": torch.zeros(1), "logit_scale": torch.zeros(())},
               tmp_path / "resnet.bin")
    with pytest.raises(NnkdError, match="MedCLIP-ResNet"):
        create_teacher(spec("medclip", tmp_path / "resnet.bin"))
    torch.save({"state_dict": {"weight": torch.zeros(1)}}, tmp_path / "other.bin")
    with pytest.raises(NnkdError, match="no MedCLIP-ViT vision tower"):
        create_teacher(spec("medclip", tmp_path / "other.bin"))



@pytest.mark.parametrize("family, folder, query", [("dinov2", "dinov2", "size=28"), ("swin", "swin", "size=64"),
                                                   ("medclip", "medclip-vit-pretrained", "size=64")])
def test_lora_finds_the_attention_projections_of_each_transformer_family(folders, family, folder, query):
    from nnkd.teachers.tuned import add_lora

    adapted = add_lora(create_teacher(spec(family, folders["root"] / folder, query)), rank=2, alpha=4)
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    projections = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj"}  # the attention's four, not the MLP


def test_pickled_code_in_a_pytorch_model_bin_is_refused_without_running_it(folders, tmp_path):
    import os

    folder = tmp_path / "dinov2"
    shutil.copytree(folders["root"] / "dinov2", folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({**state, "payload": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(NnkdError, match="carry pickled code or objects"):
        create_teacher(spec("dinov2", folder, "size=28"))
    assert not marker.exists()
