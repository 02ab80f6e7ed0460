"""Progressive Translation Learning (Sec. 4.3-4.4): n follows the step, the guide is refreshed at each
domain start, pools equal on-the-fly translation, resume is exact, DDP ranks agree; the ceiling
control trains on labelled target images; the watch scores what each domain trains on without
changing it; bad settings fail at config time. Smoke sizes on the digits fixture; the source and
diffusion models are trained once per module through the stage API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from dasslab.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
SMOKE = ["debug=smoke", "dataset.generate.n_train=120", "dataset.generate.n_val=40", "logger=csv"]
# a tiny adaptation: N = 3 domains of K = 2 steps, depths 10/20/30 respaced to 2 reverse steps; the
# watch scores 4 translations per domain; the translation settings given (tests/test_calibration.py
# covers the calibration)
TINY = ["ptl.N=3", "ptl.K=2", "ptl.t_max=30", "translate.num_steps=2", "segmenter.batch_size=2",
        "guidance=sgg", "guidance.scale=1.0", "data.limit_val=8", "ptl.watch.images=4",
        "translate.calibrate=off", "translate.variance=beta", "guidance.shift=0.1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_data_dir):
    """A source-only segmenter and a target DDPM (3 steps each), trained once by ``dasslab.commands.train.run``."""
    from hydra import compose, initialize_config_dir

    from dasslab.commands.train import run

    root = tmp_path_factory.mktemp("ptl_runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASSLAB_DATA", str(digits_data_dir))
        mp.setenv("DASSLAB_ROOT", str(root))
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            src = compose("train", SMOKE + ["stage=source", f"paths.output_dir={root / 'source'}"])
            dif = compose("train", SMOKE + ["stage=diffusion", f"paths.output_dir={root / 'diffusion'}"])
        run(src)
        run(dif)
    return {"source": root / "source" / "checkpoints" / "last.ckpt",
            "diffusion": root / "diffusion" / "checkpoints" / "last.ckpt", "data": digits_data_dir}


@pytest.fixture
def adapt_cfg(trained, tmp_path, monkeypatch):
    """adapt_cfg(*overrides) -> a composed config for a tiny adaptation from the trained models."""
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("DASSLAB_DATA", str(trained["data"]))
    monkeypatch.setenv("DASSLAB_ROOT", str(tmp_path))

    def make(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", SMOKE + TINY + ["stage=adapt",
                f"segmenter.init_ckpt={trained['source']}", f"diffusion_ckpt={trained['diffusion']}",
                f"paths.output_dir={tmp_path / 'adapt'}", *overrides])

    return make


def build(cfg):
    from dasslab.workflow.stages import build_modules

    return build_modules(cfg)


def trainer(root, max_steps, callbacks=(), **kw):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                     enable_checkpointing=checkpointing,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0, default_root_dir=str(root), callbacks=list(callbacks), **kw)


def state(module, prefix):
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder(L.Callback):
    """Per step: the model at the step's start, the guide used by the step, the logged n, the translated batch."""

    def __init__(self):
        self.model_at, self.guide_at, self.n_at, self.translated = {}, {}, {}, {}

    def on_train_start(self, trainer, module):
        original = module.translated_batch

        def spy(step, source):
            out = original(step, source)
            self.translated[step] = out["image"].detach().clone()
            return out

        module.translated_batch = spy

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.model_at[trainer.global_step] = state(module, "model.")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        s = trainer.global_step - 1
        self.guide_at[s] = state(module, "guide.")
        self.n_at[s] = int(trainer.callback_metrics["ptl/n"])


def _rename(sd, src, dst):
    return {dst + k[len(src):]: v for k, v in sd.items()}


# --------------------------------------------------------------------------- the domain walk
def test_n_follows_the_step_and_the_guide_is_refreshed_at_each_domain_start(adapt_cfg, tmp_path):
    cfg = adapt_cfg("ptl.max_steps=7")  # one step past N * K: n stays at N
    dm, module = build(cfg)
    rec = Recorder()
    t = trainer(tmp_path, 7, [rec])
    t.fit(module, datamodule=dm)
    assert rec.n_at == {s: min(1 + s // 2, 3) for s in range(7)}
    for s in range(7):
        start = min(s // 2, 2) * 2  # the step where the domain of s began
        assert same(rec.guide_at[s], _rename(rec.model_at[start], "model.", "guide.")), s
        if s != start:  # the segmenter has moved on since: the guide is a snapshot, not the model
            assert not same(rec.guide_at[s], _rename(rec.model_at[s], "model.", "guide.")), s
    assert module.refreshed == [(1, 0), (2, 2), (3, 4)]
    # domain 1's guide is the source model itself (g_0)
    from dasslab.checkpoints import load_segmenter

    source = load_segmenter(cfg.segmenter.init_ckpt)
    assert same(rec.guide_at[0], _rename(state(source, "model."), "model.", "guide."))


def test_pool_of_K_batches_equals_on_the_fly_translation(adapt_cfg, tmp_path):
    fly, pooled = Recorder(), Recorder()
    dm, module = build(adapt_cfg())
    trainer(tmp_path / "a", 4, [fly]).fit(module, datamodule=dm)
    dm, module = build(adapt_cfg("ptl.pool_size=4", "ptl.pool_batch=2"))  # M = K x batch, chunks = batches
    trainer(tmp_path / "b", 4, [pooled]).fit(module, datamodule=dm)
    assert fly.translated.keys() == pooled.translated.keys() == {0, 1, 2, 3}
    for s in fly.translated:
        torch.testing.assert_close(pooled.translated[s], fly.translated[s], rtol=0, atol=1e-5)
    # and a smaller pool is reused within the domain: the iterations draw its images in turn
    small = Recorder()
    dm, module = build(adapt_cfg("ptl.pool_size=2", "ptl.pool_batch=2"))
    trainer(tmp_path / "c", 2, [small]).fit(module, datamodule=dm)
    torch.testing.assert_close(small.translated[1], small.translated[0], rtol=0, atol=0)
    torch.testing.assert_close(small.translated[0], fly.translated[0], rtol=0, atol=1e-5)


def test_translated_batches_follow_the_depth_of_the_domain(adapt_cfg):
    from dasslab.ptl.schedule import DomainSchedule

    sched = DomainSchedule("progressive", N=3, K=2, t_max=30, T=1000)
    assert [sched.depth(sched.domain(s)) for s in range(8)] == [10, 10, 20, 20, 30, 30, 30, 30]
    assert [sched.start(s) for s in range(8)] == [0, 0, 2, 2, 4, 4, 4, 4]
    paper = DomainSchedule("progressive", N=600, K=300)
    assert paper.domain(179_999) == 600 and paper.depth(600) == 600 and paper.domain(300) == 2
    direct = DomainSchedule("direct", N=600, K=300, t_max=None)
    assert {direct.domain(s) for s in (0, 1, 10_000)} == {600} and direct.start(5000) == 0
    assert DomainSchedule("none", N=3, K=2).domain(7) == 0


# --------------------------------------------------------------------------- resume
def test_resume_mid_domain_continues_exactly(adapt_cfg, tmp_path):
    """Stop at step 5 (inside domain 2 of N = 3, K = 3), resume: same n, guide, optimiser, final metrics."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dasslab.callbacks.ptl import MiouOverDomains
    from dasslab.segmentation.evaluation import evaluate_segmenter

    cfg = adapt_cfg("ptl.K=3", "ptl.val_every_domains=1")
    # uninterrupted, with a checkpoint at step 5 to compare against
    dm, full = build(cfg)
    ck = ModelCheckpoint(dirpath=tmp_path / "full", every_n_train_steps=5, save_top_k=-1, filename="s{step}")
    t_full = trainer(tmp_path / "full", 9, [ck])
    t_full.fit(full, datamodule=dm)
    (at5,) = (tmp_path / "full").glob("s*5*.ckpt")
    # interrupted at step 5
    dm, first = build(cfg)
    t_first = trainer(tmp_path / "first", 5)
    t_first.fit(first, datamodule=dm)
    t_first.save_checkpoint(tmp_path / "stop.ckpt")
    a = torch.load(at5, weights_only=False)
    b = torch.load(tmp_path / "stop.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 5
    assert same(a["state_dict"], b["state_dict"])  # model and guide weights
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["ptl"]["refreshed"] == b["ptl"]["refreshed"] == [[1, 0], [2, 3]]
    # resume from the interruption
    dm2, resumed = build(cfg)
    rec = Recorder()
    t_res = trainer(tmp_path / "resumed", 9, [rec])
    t_res.fit(resumed, datamodule=dm2, ckpt_path=tmp_path / "stop.ckpt")
    assert sorted(rec.n_at) == [5, 6, 7, 8] and rec.n_at[5] == 2  # continues at step 5, still domain 2 ...
    assert same(rec.guide_at[5], {k: v for k, v in b["state_dict"].items() if k.startswith("guide.")})  # same guide
    ptl_full, ptl_res = (next(c for c in t.callbacks if isinstance(c, MiouOverDomains)) for t in (t_full, t_res))
    assert resumed.refreshed == full.refreshed == [(1, 0), (2, 3), (3, 6)]
    assert same(state(resumed, ""), state(full, ""))
    assert [c["miou"] for c in ptl_res.curve] == [c["miou"] for c in ptl_full.curve]
    # the watched statistics of domain 2 come back from the checkpoint, domain 3's are measured again
    assert a["ptl"]["watch"]["pools"] == b["ptl"]["watch"]["pools"]
    assert [n for n, _ in b["ptl"]["watch"]["pools"]] == [1, 2]
    assert sorted(resumed.watcher.pools) == [1, 2, 3] and resumed.watcher.pools == full.watcher.pools
    assert [c.get("pool") for c in ptl_res.curve] == [c.get("pool") for c in ptl_full.curve]
    m_full = evaluate_segmenter(full, dm.val_dataloader(), dm.class_names, tmp_path / "m_full", print_table=False)
    m_res = evaluate_segmenter(resumed, dm2.val_dataloader(), dm2.class_names, tmp_path / "m_res", print_table=False)
    assert m_res["miou"] == m_full["miou"] and m_res["per_class_iou"] == m_full["per_class_iou"]


def test_the_adapt_checkpoint_loads_as_the_adapted_segmenter(adapt_cfg, tmp_path):
    from dasslab.checkpoints import load_segmenter
    from dasslab.lit.segmenter_module import SegmenterModule

    dm, module = build(adapt_cfg())
    t = trainer(tmp_path, 3)
    t.fit(module, datamodule=dm)
    t.save_checkpoint(tmp_path / "last.ckpt")
    seg = load_segmenter(tmp_path / "last.ckpt")
    assert type(seg) is SegmenterModule
    assert same(state(seg, "model."), state(module, "model."))
    assert not same(_rename(state(seg, "model."), "model.", "guide."), state(module, "guide."))
    assert "diffusion" not in " ".join(module.state_dict())  # the DDPM stays in its own checkpoint


# --------------------------------------------------------------------------- ablations, losses
@pytest.mark.parametrize("overrides, keys", [
    ([], ["translated", "source"]),
    (["adapt.loss=ada"], ["translated"]),
    (["ptl=none"], ["source"]),
    (["ptl=ceiling"], ["translated", "source"]),
])
def test_the_loss_terms_of_each_setting(adapt_cfg, overrides, keys):
    _, module = build(adapt_cfg(*overrides))
    assert module.train_keys == keys


def test_direct_translates_every_step_at_N_with_the_source_guide(adapt_cfg, tmp_path):
    dm, module = build(adapt_cfg("ptl=direct", "ptl.N=3", "ptl.K=2", "ptl.t_max=30", "ptl.max_steps=3"))
    rec = Recorder()
    trainer(tmp_path, 3, [rec]).fit(module, datamodule=dm)
    assert rec.n_at == {0: 3, 1: 3, 2: 3}
    assert all(same(rec.guide_at[s], _rename(rec.model_at[0], "model.", "guide.")) for s in range(3))


# --------------------------------------------------------------------------- lr schedule, ceiling, watch
class LearningRate(L.Callback):
    def __init__(self):
        self.lr, self.initial = {}, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        group = trainer.optimizers[0].param_groups[0]
        self.lr[trainer.global_step], self.initial = group["lr"], group["initial_lr"]


def test_lr_schedule_domain_restarts_the_poly_decay_at_each_domain_in_a_fit(adapt_cfg, tmp_path):
    cfg = adapt_cfg("ptl.lr_schedule=domain", "ptl.max_steps=6", "ptl.watch.images=0")
    dm, module = build(cfg)
    rec = LearningRate()
    trainer(tmp_path, 6, [rec]).fit(module, datamodule=dm)
    power = cfg.segmenter.poly_power
    assert [rec.lr[s] for s in range(6)] == pytest.approx([rec.initial * (1 - (s % 2) / 2) ** power
                                                           for s in range(6)], rel=1e-9)


def test_ceiling_trains_on_labelled_target_images_of_their_own_stream(adapt_cfg, tmp_path):
    """ptl=ceiling: Eq. 12 with X^n = labelled target-train images (step-indexed, no diffusion model)."""
    from dasslab.ptl.config import validate_ptl
    from dasslab.ptl.data import TARGET_LABELED

    cfg = adapt_cfg("ptl=ceiling", "ptl.N=3", "ptl.K=2", "ptl.max_steps=3", "diffusion_ckpt=null",
                    "ptl.watch.images=4", "ptl.val_every_domains=1")
    validate_ptl(cfg)   # no diffusion checkpoint needed
    dm, module = build(cfg)
    assert module.ceiling and not module.translates and module.train_keys == ["translated", "source"]
    seen, loss_on = {}, module.loss_on

    def spy(image, label):
        seen.setdefault(module.global_step, []).append((image.detach().clone(), label.detach().clone()))
        return loss_on(image, label)

    module.loss_on = spy
    rec = Recorder()
    t = trainer(tmp_path, 3, [rec])
    t.fit(module, datamodule=dm)
    assert rec.n_at == {0: 3, 1: 3, 2: 3} and rec.translated == {}   # nothing is translated
    target, source = dm.stream(TARGET_LABELED), dm.stream()
    for s in range(3):
        (ti, tl), (si, sl) = seen[s]          # train_keys order: the "translated" term, then the source term
        tb, sb = target.batch(s), source.batch(s)
        assert torch.equal(ti, tb["image"]) and torch.equal(tl, tb["label"]), s
        assert torch.equal(si, sb["image"]) and torch.equal(sl, sb["label"]), s
        assert set(tb["name"]) != set(sb["name"]) or not torch.equal(ti, si)
    # the watch scores the target images it trains on; one domain: one measurement at the end, n = N
    curve = json.loads((tmp_path / "ptl_curve.json").read_text())
    assert [(c["n"], c["step"]) for c in curve] == [(0, 0), (3, 3)]
    from dasslab.analysis.image_stats import high_frequency_energy

    assert curve[1]["pool"]["hf"] == pytest.approx(high_frequency_energy(target.images(0, 4)[0]))


def test_the_watch_scores_each_domain_without_changing_what_is_trained(adapt_cfg, trained, tmp_path):
    """Same seed, watch on (hf, judge consistency, domain score) and off: the same weights; the
    statistics of domain n's translations are in the curve entry of n, the PNG and the checkpoint."""
    dm, off = build(adapt_cfg("ptl.max_steps=6", "ptl.watch.images=0", "ptl.val_every_domains=1"))
    trainer(tmp_path / "off", 6).fit(off, datamodule=dm)
    dm, on = build(adapt_cfg("ptl.max_steps=6", "ptl.watch.images=4", "ptl.val_every_domains=1",
                             f"ptl.watch.judge_ckpt={trained['source']}", "ptl.watch.domain_score=true",
                             "ptl.watch.classifier_steps=3", "ptl.watch.classifier_images=8"))
    t = trainer(tmp_path / "on", 6)
    t.fit(on, datamodule=dm)
    assert same(state(on, ""), state(off, ""))
    assert all("pool" not in c for c in json.loads((tmp_path / "off" / "ptl_curve.json").read_text()))
    curve = json.loads((tmp_path / "on" / "ptl_curve.json").read_text())
    assert [c["n"] for c in curve] == [0, 1, 2, 3] and "pool" not in curve[0]
    for c in curve[1:]:
        pool = c["pool"]
        assert set(pool) == {"images", "hf", "hf_target", "consistency", "consistency_all", "domain_score"}
        assert pool["images"] == 4 and pool["hf"] > 0 and 0 <= pool["domain_score"] <= 1
        assert pool["hf_target"] == curve[1]["pool"]["hf_target"] > 0
        assert 0 <= pool["consistency"] <= 100 and 0 <= pool["consistency_all"] <= 100
    assert len({c["pool"]["hf"] for c in curve[1:]}) == 3     # each domain its own translations
    assert (tmp_path / "on" / "ptl_miou.png").is_file()
    t.save_checkpoint(tmp_path / "on.ckpt")
    ck = torch.load(tmp_path / "on.ckpt", weights_only=False)
    saved = ck["ptl"]["watch"]
    assert dict((n, s) for n, s in saved["pools"]) == on.watcher.pools and sorted(on.watcher.pools) == [1, 2, 3]


# --------------------------------------------------------------------------- config-time errors
@pytest.mark.parametrize("overrides, match", [
    (["ptl.K=0"], r"ptl.K=0: expected an integer >= 1"),
    (["ptl.t_max=null", "ptl.N=1001"], r"ptl.N=1001 exceeds diffusion.num_timesteps=1000"),
    (["ptl.t_max=2000"], r"ptl.t_max=2000: expected an integer 1..1000"),
    (["ptl.pool_size=17"], r"ptl.pool_size=17 is larger than the source set \(16 images\)"),
    (["ptl.name=sideways"], r"ptl.name='sideways': expected one of progressive, direct, none, ceiling"),
    (["ptl.lr_schedule=x"], r"ptl.lr_schedule='x': expected one of global, domain, constant"),
    (["ptl=ceiling", "dataset.target_train_labeled=null"],
     r"ptl.name=ceiling: dataset=digits has no labelled target-train split \(dataset.target_train_labeled\)"),
    (["ptl.watch.images=-1"], r"ptl.watch.images=-1: expected an integer >= 0"),
    (["ptl=none", "adapt.loss=ada"], r"adapt.loss=ada with ptl=none"),
    (["dataset.crop_size=[30,30]", "dataset.image_size=[30,30]"], r"diffusion_ckpt=.*not divisible"),
])
def test_bad_settings_fail_at_config_time_with_one_line(adapt_cfg, overrides, match):
    from dasslab.ptl.config import validate_ptl

    with pytest.raises(ConfigError, match=match) as e:
        validate_ptl(adapt_cfg(*overrides))
    assert "\n" not in str(e.value)


def test_a_checkpoint_with_other_classes_is_refused(adapt_cfg, trained, tmp_path):
    from dasslab.ptl.config import validate_ptl

    ck = torch.load(trained["source"], weights_only=False)
    ck["hyper_parameters"]["class_names"] = list(ck["hyper_parameters"]["class_names"])[::-1]
    torch.save(ck, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"guide_ckpt=.*other.ckpt: its classes differ"):
        validate_ptl(adapt_cfg(f"guide_ckpt={tmp_path / 'other.ckpt'}"))
    validate_ptl(adapt_cfg())  # the good settings pass


# --------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import lightning.pytorch as L
    import torch
    from hydra import compose, initialize_config_dir
    from dasslab.callbacks.ptl import MiouOverDomains
    from dasslab.workflow.stages import build_modules

    conf, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", ["stage=adapt", *overrides])

    class Spy(L.Callback):
        def __init__(self):
            self.rows = []
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.rows.append({"step": trainer.global_step - 1, "n": int(trainer.callback_metrics["ptl/n"]),
                              "names": list(batch["source"]["name"]),
                              "target_names": list(batch["target"]["name"]),
                              "guide": float(sum(p.double().sum() for p in module.guide.parameters())),
                              "teacher": [float(v.double().sum()) for v in module.teacher.state_dict().values()]})

    L.seed_everything(cfg.seed)
    dm, module = build_modules(cfg)
    spy = Spy()
    t = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, max_steps=4, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  limit_val_batches=0, default_root_dir=str(out), callbacks=[spy])
    t.fit(module, datamodule=dm)
    t.save_checkpoint(out / "last.ckpt")
    ptl = next(c for c in t.callbacks if isinstance(c, MiouOverDomains))
    (out / f"rank{t.global_rank}.json").write_text(json.dumps({"rows": spy.rows, "curve": ptl.curve,
                                                                "world": t.world_size}))
""")


@pytest.mark.slow
def test_ddp_two_cpu_ranks_agree_on_n_and_split_the_source(adapt_cfg, trained, tmp_path):
    script = tmp_path / "ddp_adapt.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    overrides = SMOKE + TINY + [f"segmenter.init_ckpt={trained['source']}", f"diffusion_ckpt={trained['diffusion']}",
                                "ptl.val_every_domains=1", "ptl.pool_size=2", "ptl.pool_batch=2",
                                "adapt.self_training.enabled=true"]   # + self-training: one teacher on both ranks
    env = dict(os.environ, DASSLAB_DATA=str(trained["data"]), DASSLAB_ROOT=str(tmp_path), OMP_NUM_THREADS="1",
               PL_DISABLE_FORK="1")
    proc = subprocess.run([sys.executable, str(script), str(CONF), str(out), *overrides], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert [row["n"] for row in r0["rows"]] == [row["n"] for row in r1["rows"]] == [1, 1, 2, 2]
    for a, b in zip(r0["rows"], r1["rows"]):
        assert not set(a["names"]) & set(b["names"])      # each rank its own shard of the source set
        assert not set(a["target_names"]) & set(b["target_names"])   # ... and of the target-train images
        assert a["guide"] == pytest.approx(b["guide"], rel=1e-6)  # the same guide on both ranks
        assert a["teacher"] == b["teacher"]                       # the same EMA teacher, weights and BN statistics
    # the val mIoU after each domain is computed on both ranks' shards together: the same number
    assert [c["n"] for c in r0["curve"]] == [0, 1, 2]
    assert [c["miou"] for c in r0["curve"]] == pytest.approx([c["miou"] for c in r1["curve"]])
    assert sorted(p.name for p in out.glob("*.ckpt")) == ["last.ckpt"]


# --------------------------------------------------------------------------- the stage
def test_stage_adapt_runs_through_run_stage_and_leaves_the_curve_and_grid(adapt_cfg, trained, tmp_path):
    """`dasslab-train stage=adapt`: metrics.json of g_N, the mIoU-over-n curve from g_0 (= the source
    model's mIoU) to g_N (= the final evaluation), the Fig. 4 grid, an adapt checkpoint users load."""
    from dasslab.checkpoints import load_segmenter
    from dasslab.commands.train import run
    from dasslab.segmentation.evaluation import evaluate_segmenter

    cfg = adapt_cfg("stage=adapt", "ptl.max_steps=6", "ptl.val_every_domains=1", "ptl.grid_every_domains=1")
    record = run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    curve = json.loads((out / "ptl_curve.json").read_text())
    assert [c["n"] for c in curve] == [0, 1, 2, 3] and [c["step"] for c in curve] == [0, 2, 4, 6]
    assert curve[-1]["miou"] == pytest.approx(metrics["miou"], abs=1e-4)  # metrics.json keeps 4 decimals
    assert record["miou"] == metrics["miou"]
    dm, _ = build(cfg)
    source = evaluate_segmenter(load_segmenter(trained["source"]), dm.val_dataloader(), dm.class_names,
                                tmp_path / "src_eval", print_table=False)
    assert curve[0]["miou"] == pytest.approx(source["miou"], abs=1e-4)
    for name in ("ptl_miou.png", "ptl_domains.png", "overlays.png", "checkpoints/last.ckpt"):
        assert (out / name).is_file(), name
    adapted = load_segmenter(out / "checkpoints" / "last.ckpt")
    again = evaluate_segmenter(adapted, dm.val_dataloader(), dm.class_names, tmp_path / "again", print_table=False)
    assert again["miou"] == metrics["miou"]


def test_ceiling_m_trains_each_domain_on_a_pool_of_labelled_target_images_and_counts_them(adapt_cfg, tmp_path):
    """ptl=ceiling_m: domain n draws its K steps from the pool_size labelled target images its stream gives from the
    domain's first step; distinct images are counted by dataset index (ceiling: every step's batch)."""
    from dasslab.ptl.data import TARGET_LABELED

    cfg = adapt_cfg("ptl=ceiling_m", "ptl.N=3", "ptl.K=2", "ptl.pool_size=3", "diffusion_ckpt=null")
    dm, module = build(cfg)
    assert module.ceiling and module.pooled and module.domains.num_domains == 3
    seen, loss_on = {}, module.loss_on
    module.loss_on = lambda image, label: (seen.setdefault(module.global_step, []).append(label.clone()),
                                           loss_on(image, label))[1]
    trainer(tmp_path, 6).fit(module, datamodule=dm)
    target = dm.stream(TARGET_LABELED)
    for s in range(6):
        start = 2 * (s // 2)
        pool = target.images(start, 3)[1]                       # the domain's 3 labelled target images
        want = torch.stack([pool[(2 * (s - start) + j) % 3] for j in range(2)])
        assert torch.equal(seen[s][0], want), s
    counts = module.distinct_images(dm)
    pools = {i for start in (0, 2, 4) for st in range(start, start + 2) for i, _ in target.keys(st)}
    assert counts == {"source": len({i for s in range(6) for i, _ in dm.stream().keys(s)}), TARGET_LABELED: len(pools)}
    assert counts[TARGET_LABELED] <= 3 * 4                       # 3 pools of ceil(3 / 2) = 2 batches of 2
    plain_dm, plain = build(adapt_cfg("ptl=ceiling", "ptl.N=3", "ptl.K=2", "ptl.max_steps=6", "diffusion_ckpt=null"))
    assert plain.distinct_images(plain_dm)[TARGET_LABELED] == len({i for s in range(6) for i, _ in
                                                                  plain_dm.stream(TARGET_LABELED).keys(s)})


def test_direct_translates_as_many_distinct_images_as_the_walk(adapt_cfg):
    """ptl=direct's one pool holds N x pool_size translations: the progressive walk's N pools."""
    _, walk = build(adapt_cfg("ptl.pool_size=4"))
    _, one = build(adapt_cfg("ptl=direct", "ptl.pool_size=4"))
    assert walk.pool_images == 4 and one.pool_images == 3 * 4


def test_each_domain_translates_with_its_calibrated_variance_and_shift(adapt_cfg, tmp_path):
    """translate.calibration: the depth's own variance and guidance shift (the nearest calibrated depth) reach the
    sampler; t_max comes from the file."""
    cal = {"t_max": {"value": 30, "chosen": True},
           "depths": [{"n": 1, "depth": 10, "variance": 0.2, "variance_unguided": 0.9, "shift": 0.05},
                      {"n": 3, "depth": 30, "variance": "posterior", "variance_unguided": 0.7, "shift": 0.3}]}
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(cal))
    cfg = adapt_cfg("translate.calibrate=auto", "translate.variance=auto", "guidance.shift=auto", "ptl.t_max=auto",
                    f"translate.calibration={path}")
    _, module = build(cfg)
    assert module.domains.t_max == 30 and module.hparams.translation["t_max"] == 30
    v10, g10 = module.depth_settings(10)
    v20, g20 = module.depth_settings(20)      # nearest: 10 (a tie goes to the shallower depth)
    v30, g30 = module.depth_settings(30)
    assert (v10, g10.shift) == (0.2, 0.05) and (v20, g20.shift) == (0.2, 0.05)
    assert (v30, g30.shift) == ("posterior", 0.3)
    _, unguided = build(adapt_cfg("translate.calibrate=auto", "translate.variance=auto", "ptl.t_max=auto",
                                  "guidance=none", f"translate.calibration={path}"))
    assert unguided.depth_settings(30) == (0.7, None)


def test_the_test_split_is_read_only_after_training_and_reported_beside_val(adapt_cfg, tmp_path, monkeypatch):
    """Nothing chosen during a run sees target_test (the mIoU-over-n curve is on val): its images are loaded
    only by the final evaluation, after the last step, into metrics.json's ``report``."""
    from dasslab.commands.train import run
    from dasslab.data.datamodule import DASSDataModule

    reads = []
    real = DASSDataModule.report_dataloader

    def spy(self):        # the one way to the test images: when is it taken?
        reads.append((self.trainer.global_step, self.trainer.state.finished))
        return real(self)

    monkeypatch.setattr(DASSDataModule, "report_dataloader", spy)
    cfg = adapt_cfg("stage=adapt", "ptl.max_steps=6", "ptl.val_every_domains=1")
    run(cfg)
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert reads == [(6, True)]                  # once, after the 6th (last) step: the fit is over
    assert metrics["split"] == "target_val" and metrics["report"]["split"] == "target_test"
    assert 0 <= metrics["report"]["miou"] <= 100 and metrics["report"]["miou"] != metrics["miou"]
    test = json.loads((Path(cfg.paths.output_dir) / "metrics_target_test.json").read_text())
    assert test["miou"] == metrics["report"]["miou"] and test["split"] == "target_test"
