"""A non-editable install finds its configs; files are written with the user's umask."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package_of_the_tree():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dasslab").rglob("__init__.py")}
    assert found | {"dasslab.conf"} == listed


@pytest.mark.slow
def test_wheel_install_composes_the_config_from_its_own_copy(tmp_path):
    src = tmp_path / "src"  # a clean copy: the build writes build/ and *.egg-info next to the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("dasslab", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "wheel").glob("dasslab-*.whl"))
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=300)
    probe = (
        "import dasslab, dasslab.config as c\n"
        "from hydra import compose, initialize_config_dir\n"
        "with initialize_config_dir(config_dir=c.CONF_DIR, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['stage=source', 'debug=smoke', 'dataset=folder'])\n"
        "print(dasslab.__file__); print(c.CONF_DIR); print(cfg.stage.name, cfg.dataset.name, cfg.segmenter.max_steps)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module_file, conf_dir, composed = proc.stdout.strip().splitlines()[-3:]
    assert Path(module_file).is_relative_to(site) and Path(conf_dir) == site / "dasslab" / "conf"
    assert composed == "source folder 3"
    assert not (src / "dasslab" / "conf").exists()  # the wheel's conf/ came from the repo's top-level conf/


def test_atomic_writes_follow_the_umask(tmp_path):
    from dasslab.utils.io import atomic_write_text

    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    path = atomic_write_text(tmp_path / "b.json", "{}")
    assert path.stat().st_mode & 0o777 == 0o666 & ~old
