"""Weights are checked against the architecture, dtype and shape, on every load route (issue 31).

int32 weights used to be loaded by ``load_state_dict`` as if they were numbers of the model's type: every pixel
became class 0 and the command exited 0. Here each route -- the check before any work
(:func:`dasslab.checkpoints.check_checkpoint`), :func:`~dasslab.checkpoints.load_segmenter` (``dasslab-predict``,
``dasslab-eval``, ``guide_ckpt``, ``segmenter.init_ckpt``), :func:`~dasslab.checkpoints.load_diffusion`,
``backbone.weights`` and ``dasslab-export-weights`` -- refuses them in one line naming the setting, the file and
the first bad tensor; float64 is cast with one log line, float16 and bfloat16 are loaded.
"""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from dasslab.checkpoints import check_checkpoint, load_diffusion, load_segmenter
from dasslab.errors import CheckpointError
from dasslab.export.weights import export_weights
from dasslab.lit.diffusion_module import DiffusionModule
from dasslab.lit.segmenter_module import SegmenterModule
from dasslab.segmentation import build_segmenter

CLASSES = ["background", "a", "b"]
SMALL = {"name": "small", "pretrained": False, "weights": None, "freeze_bn": False,
         "options": {"widths": [8, 16, 32], "stem_stride": 1}}


@pytest.fixture(scope="module")
def seg_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    module = SegmenterModule(backbone=dict(SMALL), num_classes=3, class_names=CLASSES, optim={"lr": 0.01},
                             max_steps=1)
    path = tmp_path_factory.mktemp("w") / "seg.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def with_dtype(src, dest, dtype):
    ck = torch.load(src, weights_only=True)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    torch.save({**ck, "state_dict": state}, dest)
    return dest


def as_safetensors(src, dest, dtype):
    """The layout of ``dasslab-export-weights`` (which refuses to write such a file)."""
    ck = torch.load(src, weights_only=True)
    state = {k[len("model."):]: v.to(dtype).contiguous() for k, v in ck["state_dict"].items() if k.startswith("model.")}
    hp = ck["hyper_parameters"]
    info = {"format": 1, "kind": "segmenter", "class_names": hp["class_names"], "backbone": hp["backbone"],
            "hyper_parameters": hp}
    save_file(state, str(dest), metadata={"dasslab": json.dumps(info)})
    return dest


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.complex64, torch.bool])
def test_int_and_other_weights_are_refused_before_work_and_at_load(seg_ckpt, tmp_path, dtype):
    bad = with_dtype(seg_ckpt, tmp_path / "bad.ckpt", dtype)
    name = str(dtype).removeprefix("torch.")
    for route in (lambda: check_checkpoint(bad, "ckpt"), lambda: load_segmenter(bad, setting="ckpt")):
        with pytest.raises(CheckpointError) as e:
            route()
        line = str(e.value)
        assert line.startswith(f"ckpt={bad}: model.") and f"holds {name} numbers" in line and "\n" not in line


def test_int32_safetensors_are_refused_by_predict_eval_and_export(seg_ckpt, tmp_path):
    """The file of the issue: a safetensors export whose weights are int32 (dasslab-predict and dasslab-eval read
    it with load_segmenter after check_checkpoint)."""
    bad = as_safetensors(seg_ckpt, tmp_path / "i32.safetensors", torch.int32)
    with pytest.raises(CheckpointError, match=r"holds int32 numbers, not float16, bfloat16 or float32"):
        check_checkpoint(bad, "ckpt")
    with pytest.raises(CheckpointError, match=r"^ckpt=.*i32\.safetensors: model\.backbone\..* holds int32"):
        load_segmenter(bad, setting="ckpt")
    with pytest.raises(CheckpointError, match="holds int32 numbers"):
        export_weights(with_dtype(seg_ckpt, tmp_path / "i32.ckpt", torch.int32), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_float64_is_cast_with_one_line_and_predicts_as_float32(seg_ckpt, tmp_path, caplog):
    f64 = with_dtype(seg_ckpt, tmp_path / "f64.ckpt", torch.float64)
    with caplog.at_level(logging.WARNING, logger="dasslab"):
        module = load_segmenter(f64, setting="ckpt")
    cast_lines = [r.getMessage() for r in caplog.records if "float64 tensors" in r.getMessage()]
    assert len(cast_lines) == 1 and f"ckpt={f64}" in cast_lines[0] and "cast to float32" in cast_lines[0]
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    ref = load_segmenter(seg_ckpt)
    assert torch.allclose(module.model(x), ref.model(x), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load(seg_ckpt, tmp_path, dtype):
    half = with_dtype(seg_ckpt, tmp_path / "half.ckpt", dtype)
    check_checkpoint(half, "ckpt")
    module = load_segmenter(half, setting="ckpt")
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_a_weight_of_another_shape_is_named_before_any_work(seg_ckpt, tmp_path):
    ck = torch.load(seg_ckpt, weights_only=True)
    key = next(k for k in ck["state_dict"] if k.startswith("model.") and k.endswith("weight"))
    ck["state_dict"][key] = ck["state_dict"][key].flatten()
    torch.save(ck, tmp_path / "flat.ckpt")
    with pytest.raises(CheckpointError, match=rf"{key.replace('.', '[.]')} has shape \[\d+\] where the architecture"):
        check_checkpoint(tmp_path / "flat.ckpt", "ckpt")


def test_diffusion_weights_of_int_dtype_are_refused(tmp_path):
    torch.manual_seed(0)
    module = DiffusionModule(preset="small", image_size=[16, 16])
    state = {k: v.to(torch.int32) for k, v in module.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams)}, tmp_path / "d.ckpt")
    for route in (lambda: check_checkpoint(tmp_path / "d.ckpt", "diffusion_ckpt", ("diffusion",)),
                  lambda: load_diffusion(tmp_path / "d.ckpt")):
        with pytest.raises(CheckpointError, match=r"^diffusion_ckpt=.*: denoiser\..* holds int32 numbers"):
            route()


def test_backbone_weights_of_int_dtype_are_refused(seg_ckpt, tmp_path):
    state = {k[len("model."):]: v.to(torch.int32) for k, v in torch.load(seg_ckpt, weights_only=True)[
        "state_dict"].items() if k.startswith("model.")}
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"^backbone\.weights=.*w\.pth: .* holds int32 numbers"):
        build_segmenter("small", 3, weights=str(tmp_path / "w.pth"), widths=[8, 16, 32], stem_stride=1)
