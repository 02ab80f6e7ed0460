"""Every config group option and experiment composes; bad settings give clear errors."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dasslab.checks.settings import ConfigError, validate_config

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["dataset", "backbone", "diffusion", "guidance", "arrangement", "augment", "trainer", "logger",
          "callbacks", "debug"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_options():
    for group in GROUPS + ["experiment"]:
        assert options(group), f"conf/{group} is empty"


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_and_validates(compose, group):
    for opt in options(group):
        overrides = [f"{group}={opt}"]
        if opt == "folder":   # the working size would be read from the folder's images
            overrides += ["dataset.root=/somewhere", "dataset.image_size=[64,64]"]
        cfg = compose(*overrides)
        OmegaConf.resolve(cfg)
        validate_config(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(compose, experiment):
    cfg = compose(f"experiment={experiment}")
    OmegaConf.resolve(cfg)
    validate_config(cfg)
    assert cfg.task_name == experiment


@pytest.mark.parametrize("dataset", ["digits", "gta5_cityscapes", "synthia_cityscapes", "folder"])
def test_smoke_makes_any_dataset_tiny(compose, dataset):
    extra = ["dataset.root=/x"] if dataset == "folder" else []
    cfg = compose(f"dataset={dataset}", "debug=smoke", *extra)
    assert cfg.backbone.name == "small" and cfg.diffusion.preset == "small"
    assert cfg.segmenter.max_steps <= 5 and cfg.data.limit_train <= 32


def test_stable_names(compose):
    cfg = compose("paths.output_dir=/tmp/somewhere", "dataset=gta5_cityscapes", "dataset.source.root=/g",
                  "dataset.target.root=/c", "dataset.image_size=[64,128]")
    assert cfg.paths.output_dir == "/tmp/somewhere"
    assert cfg.dataset.target_val.root == "/c" and cfg.dataset.source.root == "/g"
    assert list(cfg.dataset.image_size) == [64, 128]
    assert compose("dataset=folder", "dataset.root=/r").dataset.target.root == "/r"


def test_synthia_subsets_match_the_label_tables(compose):
    from dasslab.data.labels import SYNTHIA_13, SYNTHIA_16

    cfg = compose("dataset=synthia_cityscapes")
    assert list(cfg.dataset.eval_subsets.miou16) == list(SYNTHIA_16)
    assert list(cfg.dataset.eval_subsets.miou13) == list(SYNTHIA_13)


def test_unknown_choice_is_a_clear_error(compose):
    with pytest.raises(ConfigCompositionException, match="backbone"):
        compose("backbone=resnet9000")


def test_unknown_stage_lists_the_stages(compose):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="stage/finetune"):
        compose("stage=finetune")


@pytest.mark.parametrize("override, match", [
    ("dataset.image_size=[0,32]", "dataset.image_size"),
    ("dataset.crop_size=[64,64]", "dataset.crop_size"),
    ("dataset.num_classes=300", "dataset.num_classes"),
    ("segmenter.lr=-1", "segmenter.lr"),
    ("segmenter.batch_size=0", "segmenter.batch_size"),
    ("stage.kind=train", "stage"),
    ("guidance.reduction=max", "guidance.reduction"),
    ("guidance.scale=-3", "guidance.scale"),
    ("translate.depth=1001", "translate depth"),
    ("ptl.N=2000", "translate depth n=2000"),    # N > T is fine under striding (t_max auto), not as phi^N's n
    ("augment.p=1.5", "augment.p"),
    ("adapt.loss=other", "adapt.loss"),
    ("segmenter.optimizer=adam", "segmenter.optimizer"),
    ("diffusion.beta_end=0.00001", "diffusion.beta_start"),
])
def test_bad_settings_name_the_setting(compose, override, match):
    cfg = compose(override)
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        validate_config(cfg)


@pytest.mark.parametrize("stage", ["source", "adapt"])
def test_each_shared_setting_is_checked_once_per_run(compose, monkeypatch, stage):
    """ptl.N / ptl.t_max / adapt.loss (``validate_shared``) are checked once for every stage, also for the
    adaptation, whose own check (``validate_ptl``) includes them."""
    import dasslab.ptl.config as ptl_config
    from dasslab.checks.settings import validate_config

    calls = []
    real = ptl_config.validate_shared
    monkeypatch.setattr(ptl_config, "validate_shared", lambda cfg: (calls.append(1), real(cfg)))
    validate_config(compose("debug=smoke", f"stage={stage}"), check_files=False)
    assert len(calls) == 1
