"""Reading a weights file or a checkpoint never runs code from it (issue 13).

A pickle whose unpickling would create a marker file is given as every setting that reads
a tensor file; each read is refused with one line naming the file, the setting and the
opt-in ``trust_checkpoint=true``, and no marker appears. Every checkpoint the project writes
loads under ``weights_only=True`` (no allow-list), ``resume=`` included, and the safetensors
export loads back to the same model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dasslab.checkpoints import (
    load_diffusion,
    load_segmenter,
    read_checkpoint,
    safe_torch_load,
    trust_checkpoints,
)
from dasslab.commands.export_weights import main as export_main
from dasslab.errors import CheckpointError, UnsafeCheckpointError
from dasslab.export.weights import export_weights
from dasslab.segmentation import build_segmenter, read_state_dict

SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv"]
# the callbacks a real run has (ModelCheckpoint state goes into the checkpoint), minus the progress bar
REAL_CALLBACKS = ["callbacks=default", "callbacks.progress=null"]
CONF = Path(__file__).resolve().parents[1] / "conf"
NUM_CLASSES = 11  # digits: background + 10


class _Touch:
    """Unpickling this calls ``open(marker, "w")``: the file appears iff the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _malicious(path: Path, marker: Path, payload: dict | None = None) -> Path:
    """A ``.pth`` that looks like a checkpoint (real tensors) and carries the marker-making object."""
    obj = {"state_dict": dict(payload or {"w": torch.zeros(2)}), "hyper_parameters": {"note": _Touch(marker)}}
    torch.save(obj, path)
    return path


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "MARKER"
    return _malicious(tmp_path / "evil.pth", marker), marker


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refusal(excinfo, path: Path, setting: str) -> str:
    """The UnsafeCheckpointError in the raised chain (Hydra's ``call`` wraps errors); its one-line message."""
    err = next((e for e in _chain(excinfo.value) if isinstance(e, UnsafeCheckpointError)), None)
    assert err is not None, f"expected an UnsafeCheckpointError, got {excinfo.value!r}"
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith(f"{setting}={path}: refused to load")
    assert "trust_checkpoint=true" in msg and "io.open" in msg
    return msg


# --------------------------------------------------------------------------- the marker is real


def test_the_malicious_file_does_run_code_when_unpickled_fully(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what the project must never do with an untrusted file
    assert marker.exists()


def test_safe_reader_refuses_before_running_anything(evil, tmp_path):
    path, marker = evil
    for setting in ("diffusion_ckpt", "guide_ckpt"):
        with pytest.raises(UnsafeCheckpointError) as e:
            read_checkpoint(path, setting)
        _refusal(e, path, setting)
    legacy = tmp_path / "legacy.pth"  # the pre-1.6 (non-zip) format goes through the same refusal
    torch.save({"x": _Touch(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_torch_load(legacy, "resume", mmap=True)
    _refusal(e, legacy, "resume")
    assert not marker.exists()


def test_unreadable_and_missing_files_are_checkpoint_errors_not_refusals(tmp_path):
    with pytest.raises(CheckpointError, match="file not found") as e:
        read_checkpoint(tmp_path / "nope.ckpt", "ckpt")
    assert not isinstance(e.value, UnsafeCheckpointError)
    truncated = tmp_path / "cut.ckpt"
    torch.save({"w": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"ckpt={truncated}: cannot read") as e:
        read_checkpoint(truncated, "ckpt")
    assert not isinstance(e.value, UnsafeCheckpointError)


def test_backbone_weights_refused_then_loaded_when_trusted(tmp_path):
    """backbone.weights: no silent fallback; the explicit and the ambient opt-in both load the file."""
    torch.manual_seed(0)
    ref = build_segmenter("small", NUM_CLASSES).eval()
    marker = tmp_path / "MARKER"
    path = _malicious(tmp_path / "weights.pth", marker, payload=ref.state_dict())
    with pytest.raises(UnsafeCheckpointError) as e:
        build_segmenter("small", NUM_CLASSES, weights=str(path))
    _refusal(e, path, "backbone.weights")
    assert not marker.exists()

    state = read_state_dict(path, trust=True)
    assert marker.exists() and set(state) == set(ref.state_dict())
    marker.unlink()
    with trust_checkpoints(True):  # what the entry points do with trust_checkpoint=true
        model = build_segmenter("small", NUM_CLASSES, weights=str(path)).eval()
    assert marker.exists()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    marker.unlink()
    with trust_checkpoints(True), pytest.raises(UnsafeCheckpointError):
        read_state_dict(path, trust=False)  # an explicit argument wins over the ambient setting
    assert not marker.exists()


def test_plain_state_dicts_need_no_trust(tmp_path):
    ref = build_segmenter("small", NUM_CLASSES)
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in ref.state_dict().items()}},
               tmp_path / "plain.pth")
    assert set(read_state_dict(tmp_path / "plain.pth")) == {f"model.{k}" for k in ref.state_dict()}


# --------------------------------------------------------------------------- every setting, via the API


# the settings that read a tensor file; "{evil}" is the malicious file, "{diffusion}" a real diffusion checkpoint
SETTINGS = {
    "backbone.weights": ("train", ["stage=source", "backbone.weights={evil}"]),
    "segmenter.init_ckpt": ("train", ["stage=source", "segmenter.init_ckpt={evil}"]),
    "resume": ("train", ["stage=source", "resume={evil}"]),
    "diffusion_ckpt": ("train", ["stage=translate", "diffusion_ckpt={evil}"]),
    "guide_ckpt": ("train", ["stage=translate", "diffusion_ckpt={diffusion}", "guidance=sgg", "guide_ckpt={evil}",
                             "translate.depths=[2]"]),
    "ckpt": ("eval", ["ckpt={evil}", "data.num_workers=0"]),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_setting_refuses_the_file(setting, evil, compose, tmp_path, request, monkeypatch):
    """Through the Python API (``dasslab.commands.train.run`` / ``dasslab.commands.eval.run``): one refusal, no code
    run."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # nothing relies on torch's default
    path, marker = evil
    config, overrides = SETTINGS[setting]
    diffusion = request.getfixturevalue("runs")["diffusion"] if setting == "guide_ckpt" else None
    overrides = [o.format(evil=path, diffusion=diffusion) for o in overrides]
    if config == "eval":
        from dasslab.commands.eval import run
    else:
        from dasslab.commands.train import run

        overrides = [*SMOKE, *overrides]
    with pytest.raises(Exception) as e:  # noqa: B017 - the chain is checked by _refusal
        run(compose(*overrides, f"paths.output_dir={tmp_path / 'run'}", config=config))
    _refusal(e, path, setting)
    assert not marker.exists()


def _cli(module: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def cli_env(tmp_path, digits_data_dir):
    return dict(os.environ, DASSLAB_DATA=str(digits_data_dir), DASSLAB_ROOT=str(tmp_path), OMP_NUM_THREADS="1")


@pytest.mark.parametrize("entry,args,setting", [
    ("dasslab.commands.eval", ["data.num_workers=0"], "ckpt"),
    ("dasslab.commands.train", ["stage=source", *SMOKE], "resume"),
])
def test_console_scripts_print_one_line_and_stop(evil, tmp_path, cli_env, entry, args, setting):
    path, marker = evil
    proc = _cli(entry, *args, f"{setting}={path}", f"paths.output_dir={tmp_path / 'run'}", env=cli_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith(f"error: {setting}={path}: refused to load") and "trust_checkpoint=true" in lines[0]
    assert not marker.exists()


def test_trust_checkpoint_setting_reaches_the_loader(evil, tmp_path, cli_env):
    """``trust_checkpoint=true`` on the command line is the opt-in: the (malicious) pickle is then executed."""
    path, marker = evil
    proc = _cli("dasslab.commands.eval", f"ckpt={path}", "trust_checkpoint=true", "data.num_workers=0",
                f"paths.output_dir={tmp_path / 'run'}", env=cli_env)
    assert marker.exists(), proc.stderr[-2000:]
    # what the file holds is not a segmenter: still one line
    assert proc.returncode == 2 and "not a segmenter checkpoint" in proc.stderr


# --------------------------------------------------------------------------- the project's own checkpoints


def _pipeline(root: Path, data: Path, rows: list[str] | None) -> list[str]:
    """Run the pipeline (smoke-sized, real callbacks) on ``rows`` (None: every job) in ``root/cache``; its rows."""
    from hydra import compose, initialize_config_dir

    from dasslab.commands.train import run

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASSLAB_DATA", str(data))
        mp.setenv("DASSLAB_ROOT", str(root))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            if rows is None:  # every job a table may need (the slow translation-quality analysis aside)
                rows = [j for j in compose("train", SMOKE).pipeline.jobs if j != "translation_quality"]
            cfg = compose("train", [*SMOKE, *REAL_CALLBACKS, "stage=pipeline", f"pipeline.rows=[{','.join(rows)}]",
                                    f"paths.output_dir={root / 'pipeline'}", f"paths.cache_dir={root / 'cache'}"])
        run(cfg)
    return rows


def _last_ckpts(root: Path) -> dict[str, Path]:
    """stage name -> its ``cache/<stage>/<key>/checkpoints/last.ckpt`` (the first one)."""
    found = {}
    for c in sorted((root / "cache").rglob("last.ckpt")):
        found.setdefault(c.relative_to(root / "cache").parts[0], c)
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_data_dir):
    """Source, oracle and diffusion runs of the pipeline (smoke-sized, with the callbacks of a real run)."""
    root = tmp_path_factory.mktemp("safe_runs")
    _pipeline(root, digits_data_dir, ["source_only", "oracle", "diffusion"])
    return {"root": root, "data": digits_data_dir, **_last_ckpts(root)}


def _check_loads_safely(ckpt: Path) -> None:
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt)) == [], ckpt
    data = safe_torch_load(ckpt, "ckpt", trust=False)
    if "preset" in data["hyper_parameters"]:
        load_diffusion(ckpt, trust=False)
        assert data["callbacks"], "the EMA callback state is in the checkpoint"
    else:
        assert len(load_segmenter(ckpt, trust=False).class_names) == NUM_CLASSES


def test_source_oracle_diffusion_checkpoints_load_safely(runs):
    assert {"source", "oracle", "diffusion"} <= set(runs)
    ckpts = sorted((runs["root"] / "cache").rglob("*.ckpt"))  # last.ckpt and ModelCheckpoint's step files
    assert len(ckpts) >= 6
    for ckpt in ckpts:
        _check_loads_safely(ckpt)


def test_every_checkpoint_the_project_writes_loads_safely(runs):
    """All pipeline jobs (adaptation included; finished jobs are reused from the cache)."""
    _pipeline(runs["root"], runs["data"], None)
    assert "adapt" in _last_ckpts(runs["root"])
    for ckpt in sorted((runs["root"] / "cache").rglob("*.ckpt")):
        _check_loads_safely(ckpt)


def _resume(ckpt: Path, out: Path, max_steps: int) -> dict:
    """Rerun the job that wrote ``ckpt`` (its own resolved config) with ``resume=ckpt`` up to ``max_steps``."""
    from omegaconf import OmegaConf

    from dasslab.commands.train import run

    cfg = OmegaConf.load(ckpt.parents[1] / ".hydra" / "config.yaml")
    section = "diffusion" if cfg.stage.name == "diffusion" else "segmenter"
    for key, value in {"resume": str(ckpt), "paths.output_dir": str(out), "stage.max_steps": max_steps,
                       f"{section}.max_steps": max_steps}.items():
        OmegaConf.update(cfg, key, value)
    run(cfg)
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("stage", ["source", "diffusion"])
def test_resume_restores_every_state_under_the_safe_path(runs, tmp_path, stage):
    """resume= through weights_only: a resumed run at the same step saves back exactly what it read."""
    before = torch.load(runs[stage], weights_only=True)
    after = _resume(runs[stage], tmp_path / "same", before["global_step"])
    assert after["global_step"] == before["global_step"]
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        _assert_equal(after[key], before[key], key)
    if stage == "diffusion":  # EMA: the averaged and the current weights both survive the round trip
        _assert_equal(after["current_model_state"], before["current_model_state"], "current_model_state")
    more = _resume(runs[stage], tmp_path / "more", before["global_step"] + 2)
    assert more["global_step"] == before["global_step"] + 2


def _assert_equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# --------------------------------------------------------------------------- safetensors export


def test_export_round_trips_segmenter_and_diffusion(runs, tmp_path):
    seg_ckpt = runs["source"]
    seg_out = export_weights(seg_ckpt, tmp_path / "seg.safetensors")
    a, b = load_segmenter(seg_ckpt), load_segmenter(seg_out, setting="ckpt")
    assert b.class_names == a.class_names
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        ref = a(x)
        torch.testing.assert_close(b(x), ref, rtol=0, atol=0)
        # the same file as backbone.weights: every tensor of the Segmenter, under its own name
        built = build_segmenter(a.hparams.backbone["name"], len(a.class_names), weights=str(seg_out)).eval()
        torch.testing.assert_close(built(x), ref, rtol=0, atol=0)
    from safetensors import safe_open

    with safe_open(str(seg_out), "pt") as f:
        import json

        meta = json.loads(f.metadata()["dasslab"])
    assert meta["kind"] == "segmenter" and meta["class_names"] == a.class_names
    assert meta["backbone"]["name"] == a.hparams.backbone["name"] and meta["backbone"]["weights"] is None

    dif_out = export_weights(runs["diffusion"], tmp_path / "dif.safetensors")
    d1, d2 = load_diffusion(runs["diffusion"]), load_diffusion(dif_out)
    _assert_equal(d2.state_dict(), d1.state_dict(), "diffusion")


def test_export_converts_a_trusted_pickle_into_a_safe_file(runs, tmp_path, capsys):
    """A checkpoint holding a non-tensor object is refused, exported once trusted, then loads safely."""
    data = torch.load(runs["source"], weights_only=True)
    data["args"] = argparse.Namespace(lr=0.1)  # what many training scripts pickle into their checkpoints
    old = tmp_path / "old.ckpt"
    torch.save(data, old)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        load_segmenter(old, setting="guide_ckpt")
    out = tmp_path / "x.safetensors"
    assert export_main([f"ckpt={old}", f"out={out}"]) == 2  # `dasslab-export-weights` refuses it, one line
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: ckpt={old}: refused") and "trust_checkpoint=true" in err
    assert not out.exists()
    assert export_main([f"ckpt={old}", f"out={out}", "trust_checkpoint=true"]) == 0
    model = load_segmenter(tmp_path / "x.safetensors", trust=False)
    _assert_equal(model.model.state_dict(), load_segmenter(runs["source"]).model.state_dict(), "export")


def test_export_refuses_what_is_not_a_model(tmp_path, runs):
    with pytest.raises(CheckpointError, match="safetensors"):
        export_weights(runs["source"], tmp_path / "x.pth")
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(CheckpointError, match="not a dasslab segmenter or diffusion checkpoint"):
        export_weights(plain, tmp_path / "x.safetensors")


# --------------------------------------------------------------------------- adaptation with PTL


def test_ptl_checkpoint_with_guide_and_callback_state_loads_and_resumes_safely(runs, compose, tmp_path):
    """The PTL module (guide weights, the walk's and the curve's state) saves only tensors and plain containers."""
    import lightning.pytorch as L

    from dasslab.workflow.stages import build_modules

    cfg = compose(*SMOKE, "stage=adapt", "augment=none", "ptl=progressive", "ptl.N=2", "ptl.K=1", "ptl.t_max=4",
                  "translate.num_steps=1", "segmenter.batch_size=2", "guidance=sgg", "guidance.scale=1.0",
                  f"segmenter.init_ckpt={runs['source']}", f"diffusion_ckpt={runs['diffusion']}",
                  f"paths.output_dir={tmp_path}")

    def fit(max_steps, ckpt_path=None):
        L.seed_everything(0)
        dm, module = build_modules(cfg)
        t = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, default_root_dir=str(tmp_path))
        t.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        return t

    fit(1).save_checkpoint(tmp_path / "ptl.ckpt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp_path / "ptl.ckpt")) == []
    data = safe_torch_load(tmp_path / "ptl.ckpt", "ckpt", trust=False)
    assert any(k.startswith("guide.") for k in data["state_dict"])
    assert any("MiouOverDomains" in k for k in data["callbacks"]) and data["ptl"]["refreshed"] == [[1, 0]]
    seg = load_segmenter(tmp_path / "ptl.ckpt", trust=False)
    _assert_equal(seg.model.state_dict(), {k[len("model."):]: v for k, v in data["state_dict"].items()
                                           if k.startswith("model.")}, "ptl model")
    assert fit(2, ckpt_path=tmp_path / "ptl.ckpt").global_step == 2
