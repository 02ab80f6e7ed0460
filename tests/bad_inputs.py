"""Bad inputs and faults for the table-driven test (tests/test_inputs_checked.py) and the note's table
(scripts/bad_inputs_table.py): small generated files, each case a real command line.

``make_world(tmp)`` writes a tiny ``folder`` dataset (16x16 images, 3 classes), damaged copies of it,
checkpoints made without training (segmenters and a DDPM built from their hyper-parameters, some with
NaN weights, another class count, another architecture) and damaged side files; ``cases(world)``
returns ``{name: (module, argv, [substrings the one line must hold], [folders that must stay empty])}``.
``run_cases`` runs them in ONE child process through the real entry points (``main()`` with ``sys.argv``,
i.e. Hydra and the one-line wrapper of ``dasslab/commands/app.py``), so the imports are paid once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
CLASSES = ("background", "a", "b")
SMALL = {"name": "small", "pretrained": False, "weights": None, "freeze_bn": False,
         "options": {"widths": [32, 64, 128], "stem_stride": 1}}

DRIVER = r"""
import contextlib, importlib, io, json, os, sys
from pathlib import Path

def snapshot(dirs):
    out = {}
    for d in dirs:
        for p in Path(d).rglob("*") if Path(d).is_dir() else []:
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out

def allowed(path, dirs):
    rel = [Path(path).relative_to(d) for d in dirs if Path(path).is_relative_to(d)]
    return any(r.parts[0] == ".hydra" or (len(r.parts) == 1 and r.suffix == ".log") for r in rel)

import time
cases_file, results_file = sys.argv[1], sys.argv[2]
cases = json.loads(Path(cases_file).read_text())
results = {}
for name, module, argv, watch in cases:
    main = importlib.import_module(module).main
    sys.argv = [module] + argv
    err, out = io.StringIO(), io.StringIO()
    before = snapshot(watch)
    start = time.perf_counter()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            ret = main()
            code = ret if isinstance(ret, int) else 0   # dasslab-export-weights, -reproduce return their status
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # a bug: reported as such
            import traceback
            code = f"raised {type(e).__name__}: {e}"
            err.write(traceback.format_exc())
    after = snapshot(watch)
    written = sorted(p for p, v in after.items() if before.get(p) != v and not allowed(p, watch))
    results[name] = {"code": code, "stderr": err.getvalue(), "written": written,
                     "seconds": round(time.perf_counter() - start, 2)}
if results_file == "-":    # under a file-size limit (tests/test_write_faults.py): a pipe has none
    sys.stdout.write("\nRESULTS" + json.dumps(results))
else:
    Path(results_file).write_text(json.dumps(results))
"""


# --------------------------------------------------------------------------- data
def folder_dataset(root: Path, classes=CLASSES, n: int = 4, size: int = 16, seed: int = 0) -> Path:
    """A valid ``dataset=folder`` tree: ``n`` labelled source, ``n`` target, ``n`` labelled target-val images."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for domain, labelled in (("source", True), ("target", False), ("target_val", True)):
        (root / domain / "images").mkdir(parents=True)
        if labelled:
            (root / domain / "labels").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                root / domain / "images" / f"{i}.png")
            if labelled:
                Image.fromarray(rng.integers(0, len(classes), (size, size), dtype=np.uint8)).save(
                    root / domain / "labels" / f"{i}.png")
    return root


def variant(good: Path, dest: Path, edit) -> Path:
    shutil.copytree(good, dest)
    edit(dest)
    return dest


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


# --------------------------------------------------------------------------- checkpoints
def _nan_first(state: dict) -> dict:
    import torch

    key = next(k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    return {**state, key: torch.full_like(state[key], float("nan"))}


def segmenter_ckpt(path: Path, classes=CLASSES, backbone: dict | None = None, nan: bool = False,
                   adapt: bool = False, seed: int = 0) -> Path:
    """A segmenter checkpoint as a run writes it (state_dict + hyper_parameters), without training."""
    import torch

    from dasslab.lit.segmenter_module import SegmenterModule

    torch.manual_seed(seed)
    module = SegmenterModule(backbone=dict(backbone or SMALL), num_classes=len(classes), class_names=list(classes),
                             optim={"lr": 0.01}, max_steps=1)
    state = module.state_dict()
    hp = dict(module.hparams)
    if adapt:
        hp["ptl"] = {"name": "progressive", "N": 2, "K": 1}
    torch.save({"state_dict": _nan_first(state) if nan else state, "hyper_parameters": hp}, path)
    return path


def diffusion_ckpt(path: Path, image_size=(16, 16), num_timesteps: int = 1000, nan: bool = False) -> Path:
    import torch

    from dasslab.lit.diffusion_module import DiffusionModule

    torch.manual_seed(0)
    module = DiffusionModule(preset="small", image_size=list(image_size), num_timesteps=num_timesteps)
    state = module.state_dict()
    torch.save({"state_dict": _nan_first(state) if nan else state, "hyper_parameters": dict(module.hparams)}, path)
    return path


def make_world(tmp: Path) -> dict:
    """Every file the cases read (see the module docstring)."""
    import torch

    from dasslab.export.weights import export_weights

    w = {"tmp": tmp, "out": tmp / "out"}
    good = w["good"] = folder_dataset(tmp / "good")
    w["latin1"] = variant(good, tmp / "latin1", lambda r: (r / "classes.txt").write_bytes(
        "background\ncaf\u00e9\nb\n".encode("latin-1")))
    w["gif"] = variant(good, tmp / "gif", lambda r: Image.new("RGB", (16, 16)).save(r / "source" / "images" / "9.gif"))

    def jpg_label(r):
        (r / "source" / "labels" / "1.png").unlink()
        Image.new("L", (16, 16)).save(r / "source" / "labels" / "1.jpg")

    w["jpglabel"] = variant(good, tmp / "jpglabel", jpg_label)
    w["corrupt_src"] = variant(good, tmp / "corrupt_src", lambda r: truncate(r / "source" / "images" / "2.png"))
    w["corrupt_val"] = variant(good, tmp / "corrupt_val", lambda r: truncate(r / "target_val" / "images" / "3.png"))
    w["ids"] = variant(good, tmp / "ids", lambda r: Image.fromarray(np.full((16, 16), 7, np.uint8)).save(
        r / "source" / "labels" / "1.png"))
    ck = tmp / "ckpt"
    ck.mkdir()
    w["seg3"] = segmenter_ckpt(ck / "seg3.ckpt")
    w["seg5"] = segmenter_ckpt(ck / "seg5.ckpt", classes=("background", "a", "b", "c", "d"))
    w["seg_wide"] = segmenter_ckpt(ck / "seg_wide.ckpt", backbone={**SMALL, "options": {"widths": [16, 32, 64]}})
    w["seg_nan"] = segmenter_ckpt(ck / "seg_nan.ckpt", nan=True)
    w["seg_nan_st"] = export_weights(w["seg_nan"], ck / "seg_nan.safetensors")
    w["adapt3"] = segmenter_ckpt(ck / "adapt3.ckpt", adapt=True)
    w["diff"] = diffusion_ckpt(ck / "diff.ckpt")
    w["diff_nan"] = diffusion_ckpt(ck / "diff_nan.ckpt", nan=True)
    w["diff_t500"] = diffusion_ckpt(ck / "diff_t500.ckpt", num_timesteps=500)
    (ck / "corrupt.ckpt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    w["corrupt_ckpt"] = ck / "corrupt.ckpt"
    torch.save(torch.load(w["seg3"], weights_only=True)["state_dict"], ck / "plain_state.pth")
    w["plain_state"] = ck / "plain_state.pth"
    nan_weights = {k[len("model."):]: v for k, v in torch.load(w["seg_nan"], weights_only=True)["state_dict"].items()
                   if k.startswith("model.")}
    torch.save(nan_weights, ck / "nan_backbone.pth")
    w["nan_weights"] = ck / "nan_backbone.pth"
    # a segmenter run folder whose saved config is damaged (predict reads it for the input size)
    run = tmp / "damaged_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    shutil.copy(w["seg3"], run / "checkpoints" / "last.ckpt")
    (run / ".hydra" / "config.yaml").write_text("dataset: {image_size: [16, 16\n  oops: [")
    w["damaged_run_ckpt"] = run / "checkpoints" / "last.ckpt"
    # images to segment, an output folder with a damaged record, a translation folder with a damaged manifest
    w["images"] = tmp / "images"
    w["images"].mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
            w["images"] / f"im{i}.png")
    more_world(w)
    damaged = w["out"] / "predict_damaged_record"
    damaged.mkdir(parents=True)
    (damaged / "predict.json").write_text('{"settings": {"checkpoint": ')
    manifest = w["out"] / "translate_damaged_manifest" / "translated" / "n0004"
    manifest.mkdir(parents=True)
    (manifest / "manifest.json").write_text("{not json")
    return w


def _save_as(path: Path, image: Image.Image, fmt: str) -> None:
    """``image`` encoded as ``fmt`` under ``path``'s name, whatever its extension says."""
    image.save(path, format=fmt)


def _with_dtype(src: Path, dest: Path, dtype, shape_of: str | None = None) -> Path:
    """A copy of checkpoint ``src`` whose floating-point weights are ``dtype`` (``shape_of``: that one weight gets
    another shape instead); a ``.safetensors`` ``dest`` is exported from it."""
    import torch
    from safetensors.torch import save_file

    ck = torch.load(src, weights_only=True)
    state = {}
    for k, v in ck["state_dict"].items():
        if shape_of is not None:
            state[k] = v.flatten() if k == shape_of else v
        else:
            state[k] = v.to(dtype) if v.is_floating_point() else v
    if dest.suffix != ".safetensors":
        torch.save({**ck, "state_dict": state}, dest)
        return dest
    # written as dasslab-export-weights writes (which refuses such weights): the header names the model
    hp = ck["hyper_parameters"]
    if "preset" in hp:
        info = {"format": 1, "kind": "diffusion", "hyper_parameters": hp}
    else:
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        info = {"format": 1, "kind": "segmenter", "class_names": list(hp["class_names"]),
                "backbone": hp["backbone"], "hyper_parameters": hp}
    save_file({k: v.contiguous() for k, v in state.items()}, str(dest), metadata={"dasslab": json.dumps(info)})
    return dest


def more_world(w: dict) -> None:
    """Files for the cases of issue 31: contents that are not what their names say, links that lead nowhere,
    weights of other dtypes or shapes, pixel bombs."""
    import torch

    tmp, good = w["tmp"], w["good"]
    labels, images = Path("source") / "labels", Path("source") / "images"
    w["jpeg_bytes_label"] = variant(good, tmp / "jpeg_bytes_label", lambda r: _save_as(
        r / labels / "1.png", Image.open(r / labels / "1.png").copy(), "JPEG"))
    w["webp_val_label"] = variant(good, tmp / "webp_val_label", lambda r: _save_as(
        r / "target_val" / "labels" / "2.png", Image.open(r / "target_val" / "labels" / "2.png").copy(), "WEBP"))
    w["gif_bytes_label"] = variant(good, tmp / "gif_bytes_label", lambda r: _save_as(
        r / labels / "3.png", Image.open(r / labels / "3.png").copy(), "GIF"))
    w["rgb_label"] = variant(good, tmp / "rgb_label", lambda r: Image.open(r / labels / "0.png").convert("RGB").save(
        r / labels / "0.png"))
    w["la_label"] = variant(good, tmp / "la_label", lambda r: Image.open(r / labels / "0.png").convert("LA").save(
        r / labels / "0.png"))
    w["text_image"] = variant(good, tmp / "text_image", lambda r: (r / images / "3.png").write_text("not an image"))
    w["orphan_label"] = variant(good, tmp / "orphan_label", lambda r: shutil.copy(r / labels / "0.png",
                                                                                 r / labels / "9.png"))
    w["orphan_val_label"] = variant(good, tmp / "orphan_val_label", lambda r: shutil.copy(
        r / "target_val" / "labels" / "0.png", r / "target_val" / "labels" / "7.png"))
    w["no_label"] = variant(good, tmp / "no_label", lambda r: (r / labels / "2.png").unlink())
    w["image_loop"] = variant(good, tmp / "image_loop", lambda r: (r / images / "5.png").symlink_to("5.png"))
    w["dangling_image"] = variant(good, tmp / "dangling_image", lambda r: (r / "target" / "images" / "6.png")
                                  .symlink_to("gone.png"))
    w["classes_loop"] = variant(good, tmp / "classes_loop", lambda r: ((r / "classes.txt").unlink(),
                                                                      (r / "classes.txt").symlink_to("classes.txt")))
    (tmp / "root_loop").symlink_to("root_loop")
    w["root_loop"] = tmp / "root_loop"
    # weights of other dtypes, a weight of another shape, links in place of checkpoints
    ck = tmp / "ckpt"
    w["seg_i32"] = _with_dtype(w["seg3"], ck / "seg_i32.ckpt", torch.int32)
    w["seg_i32_st"] = _with_dtype(w["seg3"], ck / "seg_i32.safetensors", torch.int32)
    w["seg_i64"] = _with_dtype(w["seg3"], ck / "seg_i64.ckpt", torch.int64)
    w["seg_c64"] = _with_dtype(w["seg3"], ck / "seg_c64.ckpt", torch.complex64)
    w["seg_f8_st"] = _with_dtype(w["seg3"], ck / "seg_f8.safetensors", torch.float8_e4m3fn)
    w["seg_bool"] = _with_dtype(w["seg3"], ck / "seg_bool.ckpt", torch.bool)
    first = next(k for k in torch.load(w["seg3"], weights_only=True)["state_dict"] if k.endswith("weight"))
    w["seg_flat_st"] = _with_dtype(w["seg3"], ck / "seg_flat.safetensors", None, shape_of=first)
    w["diff_i32"] = _with_dtype(w["diff"], ck / "diff_i32.ckpt", torch.int32)
    w["diff_i16_st"] = _with_dtype(w["diff"], ck / "diff_i16.safetensors", torch.int16)
    u8 = {k[len("model."):]: (v * 0).to(torch.uint8) for k, v in torch.load(w["seg3"], weights_only=True)[
        "state_dict"].items() if k.startswith("model.") and v.is_floating_point()}
    torch.save(u8, ck / "u8_backbone.pth")
    w["u8_weights"] = ck / "u8_backbone.pth"
    (ck / "loop.ckpt").symlink_to("loop.ckpt")
    w["ckpt_loop"] = ck / "loop.ckpt"
    (ck / "dangling.ckpt").symlink_to("gone.ckpt")
    w["ckpt_dangling"] = ck / "dangling.ckpt"
    (tmp / "afile").write_text("a file where a folder is expected")
    w["afile"] = tmp / "afile"
    # images to segment with a link that leads nowhere; one image of 144 million pixels (a 17 KB PNG)
    for name, link in (("images_loop", "x.png"), ("images_dangling", "gone.png")):
        shutil.copytree(w["images"], tmp / name)
        (tmp / name / "x.png").symlink_to(link)
        w[name] = tmp / name
    shutil.copytree(w["images"], tmp / "images_bomb")
    Image.new("1", (12000, 12000)).save(tmp / "images_bomb" / "bomb.png")
    w["images_bomb"] = tmp / "images_bomb"
    w["images_link"] = tmp / "images_link"
    w["images_link"].symlink_to(w["images"])
    # dasslab-tables input: one finished run
    run = tmp / "runs" / "r0"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("task_name: source\nstage: {name: source}\ndataset: {name: folder}\n")
    (run / "metrics.json").write_text(json.dumps({"miou": 10.0, "classes": list(CLASSES),
                                                  "per_class_iou": dict.fromkeys(CLASSES, 10.0)}))
    w["runs"] = tmp / "runs"


# --------------------------------------------------------------------------- the cases
def folder(root) -> list[str]:
    return ["dataset=folder", f"dataset.root={root}", "dataset.image_size=[16,16]", "dataset.crop_size=[16,16]"]


def slug(name: str) -> str:
    """A folder name for a case (Hydra's override grammar takes no ``=``, ``>``, ``[`` … in a value)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def cases(w: dict) -> dict:
    """name -> (module, argv, substrings of the one line, folders that must not receive outputs)."""
    out, good = w["out"], w["good"]
    train, translate, evaluate, predict = (f"dasslab.commands.{c}" for c in ("train", "translate", "eval", "predict"))
    smoke = ["debug=smoke", "logger=none"]
    c: dict = {}

    def t(name, extra, must, stage="source", root=good):
        run = out / slug(name)
        c[name] = (train, [f"stage={stage}", *smoke, *folder(root), *extra, f"paths.output_dir={run}"], must, [run])

    # ---- settings: types, ranges, finiteness, choices (train)
    t("segmenter.lr=nan", ["segmenter.lr=nan"], ["segmenter.lr=nan", "finite number > 0"])
    t("segmenter.lr negative", ["segmenter.lr=-0.1"], ["segmenter.lr=-0.1", "> 0"])
    t("weight decay negative", ["segmenter.weight_decay=-1"], ["segmenter.weight_decay=-1", ">= 0"])
    t("momentum 1.5", ["segmenter.momentum=1.5"], ["segmenter.momentum=1.5", "[0, 1)"])
    t("batch size 0", ["segmenter.batch_size=0"], ["segmenter.batch_size=0", "integer >= 1"])
    t("batch size 2.5", ["segmenter.batch_size=2.5"], ["segmenter.batch_size=2.5", "integer"])
    t("max_steps text", ["segmenter.max_steps=abc"], ["segmenter.max_steps='abc'", "integer"])
    t("seed negative", ["seed=-3"], ["seed=-3", "integer in 0.."])
    t("unknown optimizer", ["segmenter.optimizer=adam"], ["segmenter.optimizer='adam'", "sgd, adamw"])
    t("inference mode bogus", ["eval.inference.mode=bogus"], ["eval.inference.mode='bogus'", "whole, slide"])
    t("slide without window", ["eval.inference.mode=slide"], ["eval.inference.crop=null", "window"])
    t("slide window too large", ["eval.inference.mode=slide", "eval.inference.crop=[64,64]"],
      ["eval.inference.crop=[64, 64]", "at most [16, 16]"])
    t("eval split absent", ["eval.split=source_val"], ["eval.split=source_val", "expected one of"])
    t("limit_train 0", ["data.limit_train=0"], ["data.limit_train=0", "integer >= 1"])
    t("prescan mode", ["data.prescan=sometimes"], ["data.prescan='sometimes'", "full, headers, off"])
    t("augment.p nan", ["augment.p=nan"], ["augment.p=nan", "[0, 1]"])
    t("accumulate 0", ["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0", ">= 1"])
    t("precision", ["trainer.precision=8-bit"], ["trainer.precision='8-bit'", "bf16-mixed"])
    t("trust_checkpoint maybe", ["trust_checkpoint=maybe"], ["trust_checkpoint='maybe'", "true or false"])
    t("unknown backbone name", ["backbone.name=resnet9000"], ["backbone.name='resnet9000'", "deeplabv2_r101"])
    t("diffusion.lr=inf", ["diffusion.lr=inf"], ["diffusion.lr=inf", "finite number > 0"], stage="diffusion")
    t("ema decay 1.5", ["diffusion.ema_decay=1.5"], ["diffusion.ema_decay=1.5", "[0, 1]"], stage="diffusion")
    t("adam beta 1.0", ["diffusion.adam_betas=[0.9,1.0]"], ["diffusion.adam_betas[1]=1.0", "[0, 1)"],
      stage="diffusion")
    t("image size vs denoiser", ["dataset.image_size=[18,18]", "dataset.crop_size=[18,18]"],
      ["dataset.crop_size=[18, 18]", "multiples of 4"], stage="diffusion")
    t("lcg_input bogus", ["guidance=sgg", "guidance.lcg_input=bogus"], ["guidance.lcg_input='bogus'", "masked"])
    t("loss_on bogus", ["guidance=sgg", "guidance.loss_on=x1"], ["guidance.loss_on='x1'", "x_t"])
    t("through_denoiser on x_t", ["guidance=sgg", "guidance.through_denoiser=true"],
      ["guidance.through_denoiser=true", "loss_on=x0"])
    t("variance 2", ["translate.variance=2"], ["translate.variance=2", "[0, 1]"])
    t("lr_schedule bogus", ["ptl.lr_schedule=sometimes", f"segmenter.init_ckpt={w['seg3']}"],
      ["ptl.lr_schedule='sometimes'", "global, domain, constant"], stage="adapt")
    t("quality setting NaN", ["quality.settings.sgg.scale=nan"], ["quality.settings.sgg", "guidance.scale=nan"],
      stage="quality")
    t("ceiling without target labels", ["ptl=ceiling", f"segmenter.init_ckpt={w['seg3']}"],
      ["ptl.name=ceiling", "target_train_labeled"], stage="adapt")
    # ---- checkpoints: kind, finite weights, classes, architecture (train)
    t("init_ckpt NaN safetensors", [f"segmenter.init_ckpt={w['seg_nan_st']}"],
      [f"segmenter.init_ckpt={w['seg_nan_st']}", "non-finite weights"])
    t("init_ckpt other layer shapes", [f"segmenter.init_ckpt={w['seg_wide']}"],
      [f"segmenter.init_ckpt={w['seg_wide']}", "other layers"])
    t("init_ckpt other backbone", ["backbone=fcn8s_vgg16", "backbone.pretrained=false",
                                   f"segmenter.init_ckpt={w['seg3']}"],
      [f"segmenter.init_ckpt={w['seg3']}", "a small segmenter", "backbone=fcn8s_vgg16"])
    t("init_ckpt 5 classes", [f"segmenter.init_ckpt={w['seg5']}"],
      [f"segmenter.init_ckpt={w['seg5']}", "5 classes", "3 classes"])
    t("init_ckpt is a DDPM", [f"segmenter.init_ckpt={w['diff']}"],
      [f"segmenter.init_ckpt={w['diff']}", "a diffusion checkpoint", "expected a segmenter"])
    t("adapt init NaN", [f"segmenter.init_ckpt={w['seg_nan']}", f"diffusion_ckpt={w['diff']}"],
      [f"segmenter.init_ckpt={w['seg_nan']}", "non-finite"], stage="adapt")
    t("adapt diffusion_ckpt NaN", [f"segmenter.init_ckpt={w['seg3']}", f"diffusion_ckpt={w['diff_nan']}"],
      [f"diffusion_ckpt={w['diff_nan']}", "non-finite"], stage="adapt")
    t("resume from adaptation", [f"resume={w['adapt3']}"],
      [f"resume={w['adapt3']}", "an adaptation checkpoint", "stage=source|oracle|judge"])
    t("resume corrupt", [f"resume={w['corrupt_ckpt']}"], [f"resume={w['corrupt_ckpt']}", "cannot read"])
    t("resume DDPM of other T", [f"resume={w['diff_t500']}"],
      [f"resume={w['diff_t500']}", "num_timesteps=500", "1000"], stage="diffusion")
    t("backbone.weights NaN", [f"backbone.weights={w['nan_weights']}"],
      [f"backbone.weights={w['nan_weights']}", "non-finite"])
    # ---- data files (train: the pre-scan)
    t("classes.txt Latin-1", [], [str(w["latin1"] / "classes.txt"), "not UTF-8", "saved as UTF-8"], root=w["latin1"])
    t("GIF among images", [], [str(w["gif"] / "source" / "images" / "9.gif"), "not read by the loader"],
      root=w["gif"])
    t("JPEG label", [], [str(w["jpglabel"] / "source" / "labels" / "1.jpg"), "read only as PNG"],
      root=w["jpglabel"])
    t("label ids outside classes", [], [str(w["ids"] / "source" / "labels" / "1.png"), "outside [0, 3)"],
      root=w["ids"])
    # ---- pipeline: every job checked before the first runs, damaged job record
    t("pipeline job setting", ["pipeline.rows=[source_only,full]", "ptl.lr_schedule=bogus",
                               f"paths.cache_dir={out / 'cache_a'}"],
      ["pipeline job full", "ptl.lr_schedule='bogus'"], stage="pipeline")
    t("pipeline parallel 0", ["pipeline.parallel=0"], ["pipeline.parallel=0", "integer >= 1"], stage="pipeline")
    t("pipeline damaged DONE.json", pipeline_done_argv(w), ["DONE.json", "unreadable job record"], stage="pipeline")

    # ---- translate
    def tr(name, extra, must, root=good):
        run = out / slug(name)
        argv = [*smoke, *folder(root), f"diffusion_ckpt={w['diff']}", "translate.depths=[4]",
                "translate.num_steps=2", *extra, f"paths.output_dir={run}"]
        c[name] = (translate, argv, must, [run])

    tr("translate: segmenter as DDPM", [f"diffusion_ckpt={w['seg3']}"],
       [f"diffusion_ckpt={w['seg3']}", "a segmenter checkpoint", "expected a diffusion checkpoint"])
    tr("translate: DDPM NaN", [f"diffusion_ckpt={w['diff_nan']}"], [f"diffusion_ckpt={w['diff_nan']}", "non-finite"])
    tr("translate: size vs denoiser", ["dataset.image_size=[18,18]", "dataset.crop_size=[16,16]"],
       ["dataset.image_size=[18, 18]", "multiples of 4"])
    tr("translate: depth > T of checkpoint", [f"diffusion_ckpt={w['diff_t500']}", "translate.depths=[600]"],
       ["translate.depths=600", "T=500"])
    tr("translate: split bogus", ["translate.split=elsewhere"], ["translate.split='elsewhere'", "source, target"])
    tr("translate: batch 0", ["translate.batch_size=0"], ["translate.batch_size=0", "integer >= 1"])
    tr("translate: limit -3", ["translate.limit=-3"], ["translate.limit=-3", "integer >= 1"])
    tr("translate: steps 0", ["translate.num_steps=0"], ["translate.num_steps=0", "integer > 0"])
    tr("translate: corrupt source image", [], [str(w["corrupt_src"] / "source" / "images" / "2.png"), "decode"],
       root=w["corrupt_src"])
    tr("translate: guide of 5 classes", ["guidance=sgg", f"guide_ckpt={w['seg5']}"],
       [f"guide_ckpt={w['seg5']}", "5 classes", "3 classes"])
    tr("translate: guidance without guide", ["guidance=sgg"], ["guidance=sgg", "needs guide_ckpt"])
    tr("translate: guide is a DDPM", ["guidance=sgg", f"guide_ckpt={w['diff']}"],
       [f"guide_ckpt={w['diff']}", "a diffusion checkpoint"])
    dm = out / "translate_damaged_manifest"
    c["translate: damaged manifest"] = (translate, [*smoke, *folder(good), f"diffusion_ckpt={w['diff']}",
                                                    "translate.depths=[4]", "translate.num_steps=2",
                                                    f"paths.output_dir={dm}"],
                                        [str(dm / "translated" / "n0004" / "manifest.json"), "unreadable"], [dm])

    # ---- eval
    def ev(name, extra, must, root=good, ckpt=None):
        run = out / slug(name)
        argv = ["dataset=folder", f"dataset.root={root}", "dataset.image_size=[16,16]",
                f"ckpt={ckpt or w['seg3']}", *extra, f"paths.output_dir={run}"]
        c[name] = (evaluate, argv, must, [run])

    ev("eval: NaN checkpoint", [], [f"ckpt={w['seg_nan']}", "non-finite"], ckpt=w["seg_nan"])
    ev("eval: DDPM checkpoint", [], [f"ckpt={w['diff']}", "a diffusion checkpoint"], ckpt=w["diff"])
    ev("eval: 5-class checkpoint", [], [f"ckpt={w['seg5']}", "5 classes", "dataset.target_val"], ckpt=w["seg5"])
    ev("eval: plain state dict", [], [f"ckpt={w['plain_state']}", "not a segmenter checkpoint"], ckpt=w["plain_state"])
    ev("eval: missing checkpoint", [], ["ckpt=", "file not found"], ckpt=w["tmp"] / "none.ckpt")
    ev("eval: inference mode", ["eval.inference.mode=bogus"], ["eval.inference.mode='bogus'", "whole, slide"])
    ev("eval: unlabelled split", ["eval.split=target"], ["eval.split=target", "has no labels"])
    ev("eval: split not in dataset", ["eval.split=source_val"], ["eval.split=source_val", "has no dataset.source_val"])
    ev("eval: corrupt val image", [], [str(w["corrupt_val"] / "target_val" / "images" / "3.png"), "decode"],
       root=w["corrupt_val"])
    ev("eval: batch 0", ["eval.batch_size=0"], ["eval.batch_size=0", "integer >= 1"])
    ev("eval: limit_val -1", ["data.limit_val=-1"], ["data.limit_val=-1", "integer >= 1"])
    ev("eval: device", ["device=tpu9"], ["device='tpu9'", "auto, cpu, cuda"])

    # ---- predict
    def pr(name, extra, must, ckpt=None, output=None):
        run = output or out / slug(name)
        argv = [f"ckpt={ckpt or w['seg3']}", f"input={w['images']}", f"output={run}", "size=[16,16]",
                "num_workers=0", "progress=false", *extra]
        c[name] = (predict, argv, must, [run])

    pr("predict: DDPM checkpoint", [], [f"ckpt={w['diff']}", "a diffusion checkpoint"], ckpt=w["diff"])
    pr("predict: NaN safetensors", [], [f"ckpt={w['seg_nan_st']}", "non-finite"], ckpt=w["seg_nan_st"])
    pr("predict: corrupt checkpoint", [], [f"ckpt={w['corrupt_ckpt']}", "cannot read"], ckpt=w["corrupt_ckpt"])
    pr("predict: mode bogus", ["mode=bogus"], ["mode='bogus'", "whole, slide"])
    pr("predict: size [0,3]", ["size=[0,3]"], ["size=[0, 3]", "two positive integers"])
    pr("predict: overlay alpha 2", ["overlay_alpha=2"], ["overlay_alpha=2", "[0, 1]"])
    pr("predict: batch 0", ["batch_size=0"], ["batch_size=0", "integer >= 1"])
    pr("predict: window larger than input", ["mode=slide", "crop=[64,64]"], ["crop=[64, 64]", "at most [16, 16]"])
    pr("predict: stride 0", ["stride=[0,1]"], ["stride=[0, 1]", "positive integers"])
    pr("predict: outputs", ["outputs=[labels,heatmap]"], ["outputs=", "subset"])
    pr("predict: overwrite maybe", ["overwrite=maybe"], ["overwrite='maybe'", "true or false"])
    pr("predict: missing input", [f"input={w['tmp'] / 'nowhere'}"], ["input=", "folder not found"])
    c["predict: damaged run config"] = (predict, [f"ckpt={w['damaged_run_ckpt']}", f"input={w['images']}",
                                                  f"output={out / 'predict_run_config'}", "num_workers=0",
                                                  "progress=false"],
                                        [".hydra/config.yaml", "unreadable run config", "size=[H,W]"],
                                        [out / "predict_run_config"])
    pr("predict: damaged predict.json", [], ["predict.json", "unreadable prediction record"],
       output=out / "predict_damaged_record")
    issue31_cases(c, w, t, tr, ev, pr)
    return c


def issue31_cases(c: dict, w: dict, t, tr, ev, pr) -> None:
    """Contents that are not what their names say, orphans, links that lead nowhere, pixel bombs, weights of
    other dtypes and shapes, command-line interpolations, export, reproduce and tables arguments."""
    out = w["out"]
    train, evaluate = "dasslab.commands.train", "dasslab.commands.eval"
    src_labels, src_images = Path("source") / "labels", Path("source") / "images"
    # ---- data files: contents, not names; orphans; links; the pixel cap (train)
    t("label holds JPEG bytes", [], [str(w["jpeg_bytes_label"] / src_labels / "1.png"), "holds JPEG data, not PNG"],
      root=w["jpeg_bytes_label"])
    t("label holds GIF bytes", [], [str(w["gif_bytes_label"] / src_labels / "3.png"), "holds GIF data, not PNG"],
      root=w["gif_bytes_label"])
    t("label is RGB", [], [str(w["rgb_label"] / src_labels / "0.png"), "mode RGB (colours)"], root=w["rgb_label"])
    t("label is grey + alpha", [], [str(w["la_label"] / src_labels / "0.png"), "mode LA"], root=w["la_label"])
    t("image holds text", [], [str(w["text_image"] / src_images / "3.png"), "cannot decode image"],
      root=w["text_image"])
    t("label without image", [], [str(w["orphan_label"] / src_labels / "9.png"), "label has no image",
                                  "1 of 5 labels lack images"], root=w["orphan_label"])
    t("image without label", [], [str(w["no_label"] / src_images / "2.png"), "image has no label",
                                  "1 of 4 images lack labels"], root=w["no_label"])
    t("image is a symlink loop", [], [str(w["image_loop"] / src_images / "5.png"), "symlink loop"],
      root=w["image_loop"])
    t("image is a dangling link", [], [str(w["dangling_image"] / "target" / "images" / "6.png"), "dangling symlink"],
      stage="diffusion", root=w["dangling_image"])
    t("classes.txt is a symlink loop", [], [str(w["classes_loop"] / "classes.txt"), "symlink loop"],
      root=w["classes_loop"])
    t("dataset.root is a symlink loop", [], [f"dataset.root={w['root_loop']}", "symlink loop"], root=w["root_loop"])
    t("pixel cap", ["data.max_pixels=200"], ["16x16 = 256 pixels", "data.max_pixels=200"])
    t("pixel cap 0", ["data.max_pixels=0"], ["data.max_pixels=0", "integer >= 1"])
    t("pixel cap text", ["data.max_pixels=lots"], ["data.max_pixels='lots'", "integer >= 1"])
    # ---- weights: dtype and shape against the architecture (train)
    t("init_ckpt int32", [f"segmenter.init_ckpt={w['seg_i32']}"],
      [f"segmenter.init_ckpt={w['seg_i32']}", "holds int32 numbers", "float16, bfloat16 or float32"])
    t("init_ckpt int32 safetensors", [f"segmenter.init_ckpt={w['seg_i32_st']}"],
      [f"segmenter.init_ckpt={w['seg_i32_st']}", "holds int32 numbers"])
    t("init_ckpt complex64", [f"segmenter.init_ckpt={w['seg_c64']}"],
      [f"segmenter.init_ckpt={w['seg_c64']}", "holds complex64 numbers"])
    t("init_ckpt float8 safetensors", [f"segmenter.init_ckpt={w['seg_f8_st']}"],
      [f"segmenter.init_ckpt={w['seg_f8_st']}", "holds float8_e4m3fn numbers"])
    t("init_ckpt bool", [f"segmenter.init_ckpt={w['seg_bool']}"],
      [f"segmenter.init_ckpt={w['seg_bool']}", "holds bool numbers"])
    t("resume int32", [f"resume={w['seg_i32']}"], [f"resume={w['seg_i32']}", "holds int32 numbers"])
    t("resume DDPM int32", [f"resume={w['diff_i32']}"], [f"resume={w['diff_i32']}", "holds int32 numbers"],
      stage="diffusion")
    t("adapt init int64", [f"segmenter.init_ckpt={w['seg_i64']}", f"diffusion_ckpt={w['diff']}"],
      [f"segmenter.init_ckpt={w['seg_i64']}", "holds int64 numbers"], stage="adapt")
    t("adapt diffusion int32", [f"segmenter.init_ckpt={w['seg3']}", f"diffusion_ckpt={w['diff_i32']}"],
      [f"diffusion_ckpt={w['diff_i32']}", "holds int32 numbers", "denoiser"], stage="adapt")
    t("backbone.weights uint8", [f"backbone.weights={w['u8_weights']}"],
      [f"backbone.weights={w['u8_weights']}", "holds uint8 numbers"])
    t("init_ckpt symlink loop", [f"segmenter.init_ckpt={w['ckpt_loop']}"],
      [f"segmenter.init_ckpt={w['ckpt_loop']}", "symlink loop"])
    t("resume dangling link", [f"resume={w['ckpt_dangling']}"], [f"resume={w['ckpt_dangling']}", "dangling symlink"])
    t("backbone.weights symlink loop", [f"backbone.weights={w['ckpt_loop']}"],
      [f"backbone.weights={w['ckpt_loop']}", "symlink loop"])
    # ---- command line (train)
    t("dataset.root=${oops}", ["dataset.root=${oops}"], ["dataset.root=${oops}", "Interpolation key 'oops' not found"])
    t("init_ckpt=${paths.nope}", ["segmenter.init_ckpt=${paths.nope}"],
      ["segmenter.init_ckpt=${paths.nope}", "cannot be resolved"])
    c["output folder inside a file"] = (train, ["stage=source", "debug=smoke", "logger=none", *folder(w["good"]),
                                                f"paths.output_dir={w['afile'] / 'run'}"],
                                        [str(w["afile"] / "run"), "cannot create the run folder"], [out])
    # ---- translate
    tr("translate: DDPM int32", [f"diffusion_ckpt={w['diff_i32']}"], [f"diffusion_ckpt={w['diff_i32']}", "int32"])
    tr("translate: DDPM int16 safetensors", [f"diffusion_ckpt={w['diff_i16_st']}"],
       [f"diffusion_ckpt={w['diff_i16_st']}", "holds int16 numbers"])
    tr("translate: guide int64", ["guidance=sgg", f"guide_ckpt={w['seg_i64']}"],
       [f"guide_ckpt={w['seg_i64']}", "holds int64 numbers"])
    tr("translate: label holds JPEG bytes", [], [str(w["jpeg_bytes_label"] / src_labels / "1.png"), "JPEG data"],
       root=w["jpeg_bytes_label"])
    tr("translate: label without image", [], [str(w["orphan_label"] / src_labels / "9.png"), "label has no image"],
       root=w["orphan_label"])
    tr("translate: diffusion_ckpt=${oops}", ["diffusion_ckpt=${oops}"],
       ["diffusion_ckpt=${oops}", "cannot be resolved"])
    tr("translate: DDPM symlink loop", [f"diffusion_ckpt={w['ckpt_loop']}"],
       [f"diffusion_ckpt={w['ckpt_loop']}", "symlink loop"])
    tr("translate: pixel cap", ["data.max_pixels=100"], ["16x16 = 256 pixels", "data.max_pixels=100"])
    # ---- eval
    ev("eval: int32 checkpoint", [], [f"ckpt={w['seg_i32']}", "holds int32 numbers"], ckpt=w["seg_i32"])
    ev("eval: int32 safetensors", [], [f"ckpt={w['seg_i32_st']}", "holds int32 numbers"], ckpt=w["seg_i32_st"])
    ev("eval: weight of another shape", [], [f"ckpt={w['seg_flat_st']}", "has shape"], ckpt=w["seg_flat_st"])
    ev("eval: label holds WebP bytes", [], [str(w["webp_val_label"] / "target_val" / "labels" / "2.png"),
                                            "holds WEBP data, not PNG"], root=w["webp_val_label"])
    ev("eval: label without image", [], [str(w["orphan_val_label"] / "target_val" / "labels" / "7.png"),
                                         "label has no image"], root=w["orphan_val_label"])
    ev("eval: checkpoint symlink loop", [], [f"ckpt={w['ckpt_loop']}", "symlink loop"], ckpt=w["ckpt_loop"])
    ev("eval: checkpoint dangling link", [], [f"ckpt={w['ckpt_dangling']}", "dangling symlink"],
       ckpt=w["ckpt_dangling"])
    ev("eval: ckpt=${oops}", [], ["ckpt=${oops}", "cannot be resolved"], ckpt="${oops}")
    ev("eval: pixel cap", ["data.max_pixels=64"], ["16x16 = 256 pixels", "data.max_pixels=64"])
    c["eval: output folder inside a file"] = (evaluate, ["dataset=folder", f"dataset.root={w['good']}",
                                                         "dataset.image_size=[16,16]", f"ckpt={w['seg3']}",
                                                         f"paths.output_dir={w['afile'] / 'eval'}"],
                                              [str(w["afile"] / "eval"), "cannot create the run folder"], [out])
    # ---- predict
    pr("predict: int32 safetensors", [], [f"ckpt={w['seg_i32_st']}", "holds int32 numbers"], ckpt=w["seg_i32_st"])
    pr("predict: int32 checkpoint", [], [f"ckpt={w['seg_i32']}", "holds int32 numbers"], ckpt=w["seg_i32"])
    pr("predict: complex64 checkpoint", [], [f"ckpt={w['seg_c64']}", "complex64"], ckpt=w["seg_c64"])
    pr("predict: weight of another shape", [], [f"ckpt={w['seg_flat_st']}", "has shape"], ckpt=w["seg_flat_st"])
    pr("predict: DDPM int32", [], [f"ckpt={w['diff_i32']}", "a diffusion checkpoint"], ckpt=w["diff_i32"])
    pr("predict: output = input", [], [f"output={w['images']}", "the same folder as input"], output=w["images"])
    pr("predict: output = input, through a link", [], [f"output={w['images_link']}", "the same folder as input"],
       output=w["images_link"])
    pr("predict: image is a symlink loop", [f"input={w['images_loop']}"],
       [str(w["images_loop"] / "x.png"), "symlink loop"])
    pr("predict: image is a dangling link", [f"input={w['images_dangling']}"],
       [str(w["images_dangling"] / "x.png"), "dangling symlink"])
    pr("predict: input=${oops}", ["input=${oops}"], ["input=${oops}", "cannot be resolved"])
    pr("predict: pixel cap", ["max_pixels=100"], ["24x20 = 480 pixels", "max_pixels=100"])
    pr("predict: pixel cap 0", ["max_pixels=0"], ["max_pixels=0", "integer >= 1"])
    pr("predict: decompression bomb", [f"input={w['images_bomb']}"],
       [str(w["images_bomb"] / "bomb.png"), "12000x12000 = 144000000 pixels", "max_pixels=100000000"])
    pr("predict: checkpoint symlink loop", [], [f"ckpt={w['ckpt_loop']}", "symlink loop"], ckpt=w["ckpt_loop"])
    pr("predict: output inside a file", [], [str(w["afile"] / "pred"), "cannot create the run folder"],
       output=w["afile"] / "pred")
    # ---- dasslab-export-weights
    export = "dasslab.commands.export_weights"

    def ex(name, argv, must, watch):
        c[name] = (export, argv, must, [watch])

    ex("export: out inside a file", [f"ckpt={w['seg3']}", f"out={w['afile'] / 'm.safetensors'}"],
       [f"out={w['afile'] / 'm.safetensors'}", "is a file, not a folder"], out / "export")
    ex("export: out is a folder", [f"ckpt={w['seg3']}", f"out={out}"], [f"out={out}", ".safetensors"], out)
    ex("export: out is .pt", [f"ckpt={w['seg3']}", f"out={out / 'export' / 'm.pt'}"], ["m.pt", ".safetensors"],
       out / "export")
    ex("export: int32 weights", [f"ckpt={w['seg_i32']}", f"out={out / 'export' / 'i32.safetensors'}"],
       [f"ckpt={w['seg_i32']}", "holds int32 numbers"], out / "export")
    ex("export: missing checkpoint", [f"ckpt={w['tmp'] / 'none.ckpt'}", f"out={out / 'export' / 'n.safetensors'}"],
       ["ckpt=", "file not found"], out / "export")
    ex("export: checkpoint symlink loop", [f"ckpt={w['ckpt_loop']}", f"out={out / 'export' / 'l.safetensors'}"],
       [f"ckpt={w['ckpt_loop']}", "symlink loop"], out / "export")
    ex("export: plain state dict", [f"ckpt={w['plain_state']}", f"out={out / 'export' / 'p.safetensors'}"],
       [f"ckpt={w['plain_state']}", "not a dasslab segmenter or diffusion checkpoint"], out / "export")
    ex("export: unknown argument", [f"ckpt={w['seg3']}", "format=onnx"], ["format=onnx", "unknown setting format"],
       out / "export")
    ex("export: no ckpt", [f"out={out / 'export' / 'x.safetensors'}"], ["ckpt: a value is required"], out / "export")
    # ---- dasslab-reproduce (its --seeds is checked before any experiment is composed)
    reproduce = "dasslab.commands.reproduce"
    for seeds in ("-3", "0"):
        c[f"reproduce: --seeds {seeds}"] = (reproduce, ["--seeds", seeds, "--dry-run", "table3"],
                                            [f"--seeds={seeds}", "integer >= 1"], [out])
    # ---- dasslab-tables
    tables = "dasslab.commands.tables"
    c["tables: runs not found"] = (tables, [f"runs={w['tmp'] / 'nowhere'}", f"out={out / 'tables'}"],
                                   ["runs=", "folder not found"], [out])
    c["tables: out inside a file"] = (tables, [f"runs={w['runs']}", f"out={w['afile'] / 'tables'}"],
                                      [f"out={w['afile'] / 'tables'}", "cannot create the folder"], [out])
    c["tables: runs is a symlink loop"] = (tables, [f"runs={w['root_loop']}", f"out={out / 'tables'}"],
                                           [f"runs={w['root_loop']}", "symlink loop"], [out])
    c["tables: unknown setting"] = (tables, [f"runs={w['runs']}", f"out={out / 'tables'}", "format=latex"],
                                    ["format=latex", "unknown setting"], [out])
    c["tables: no out"] = (tables, [f"runs={w['runs']}"], ["out: a value is required"], [out])


def pipeline_done_argv(w: dict) -> list[str]:
    return ["pipeline.rows=[source_only]", f"paths.cache_dir={w['out'] / 'cache_b'}"]


def plant_damaged_done(w: dict, conf_dir: str) -> Path:
    """Write a damaged DONE.json where the ``pipeline damaged DONE.json`` case's source_only job would be reused."""
    from hydra import compose, initialize_config_dir

    from dasslab.workflow.plan import plan

    argv = ["stage=pipeline", "debug=smoke", "logger=none", *folder(w["good"]), *pipeline_done_argv(w),
            f"paths.output_dir={w['out'] / slug('pipeline damaged DONE.json')}"]
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose("train", argv)
    planned, _ = plan(cfg, list(cfg.pipeline.rows))
    done = planned["source_only"].out / "DONE.json"
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text('{"miou": 11.3, ')
    return done


def run_cases(cs: dict, tmp: Path, env: dict | None = None, timeout: int = 600, prefix: list | None = None) -> dict:
    """Run every case in one child process; ``{name: {code, stderr, written}}``. ``prefix``: the command the
    child runs under (e.g. a shell with ``ulimit -f``); its results then come back on stdout."""
    payload = tmp / "cases.json"
    payload.write_text(json.dumps([[n, m, [str(a) for a in argv], [str(d) for d in watch]]
                                   for n, (m, argv, _, watch) in cs.items()]))
    results = tmp / "results.json"
    env = dict(os.environ if env is None else env)
    for key in ("HYDRA_FULL_ERROR", "DASSLAB_DEBUG", "_DASSLAB_DEBUG_REQUESTED"):
        env.pop(key, None)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline",
               DASSLAB_ROOT=str(tmp))
    answer = "-" if prefix else str(results)
    proc = subprocess.run([*(prefix or []), sys.executable, "-c", DRIVER, str(payload), answer], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if prefix:
        if "\nRESULTS" not in proc.stdout:
            raise RuntimeError(f"the driver failed: {proc.stderr[-3000:]}")
        return json.loads(proc.stdout.rsplit("\nRESULTS", 1)[1])
    if not results.is_file():
        raise RuntimeError(f"the driver failed: {proc.stderr[-3000:]}")
    return json.loads(results.read_text())


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


BOILERPLATE = ("debug=smoke", "logger=none", "dataset=folder", "dataset.image_size=[16,16]",
               "dataset.crop_size=[16,16]", "dataset.root=T/good", "num_workers=0", "progress=false", "size=[16,16]",
               "translate.depths=[4]", "translate.num_steps=2", "input=T/images")


def table(cs: dict, results: dict, tmp: Path) -> str:
    """The note's table: input | command | line printed. ``T`` stands for the test's folder; every command also
    has the settings of ``BOILERPLATE`` (16x16 ``folder`` data in T/good, debug=smoke), which are not shown,
    nor the first ``diffusion_ckpt=T/ckpt/diff.ckpt`` of translate, ``ckpt=T/ckpt/seg3.ckpt`` (eval, predict,
    when not replaced) and the output folders."""
    cmd = {f"dasslab.commands.{c}": f"dasslab-{c.replace('_', '-')}"
           for c in ("train", "translate", "eval", "predict", "export_weights", "reproduce", "tables")}
    rows = ["| input | command | line printed |", "|---|---|---|"]
    for name, (module, argv, _, _) in cs.items():
        shown_args, outputs, seen = [], [], set()
        defaults = {"dasslab.commands.translate": "diffusion_ckpt=T/ckpt/diff.ckpt",
                    "dasslab.commands.eval": "ckpt=T/ckpt/seg3.ckpt",
                    "dasslab.commands.predict": "ckpt=T/ckpt/seg3.ckpt"}
        for a in (str(a).replace(str(tmp), "T") for a in argv):
            key = a.split("=", 1)[0]
            default = a == defaults.get(module) and key not in seen
            seen.add(key)
            if key in ("paths.output_dir", "output") and a.split("=", 1)[1].startswith("T/out/"):
                outputs.append(a)                   # the case's own output folder: not part of the input
            elif not (a in BOILERPLATE or default or key == "paths.cache_dir"):
                shown_args.append(a)
        shown_args = shown_args or outputs          # the fault is in the output folder: name it
        lines = [line.replace(str(tmp), "T") for line in error_lines(results[name]["stderr"])]
        shown = " / ".join(lines) if lines else f"(exit {results[name]['code']}, nothing printed)"
        esc = lambda text: text.replace("|", "\\|")  # noqa: E731  (a pipe inside a cell)
        rows.append(f"| {esc(name)} | `{esc(cmd[module] + ' ' + ' '.join(shown_args))}` | `{esc(shown)}` |")
    return "\n".join(rows) + "\n"
