"""Every command answers --help with its usage and exit status 0; `make help` and the docs tell the truth
about the targets and the launcher default."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def entry_points() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: command -> module:function."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', block, re.M))


SCRIPTS = entry_points()


OWN_OPTION = {"dasslab-train": "experiment=", "dasslab-eval": "ckpt=", "dasslab-translate": "diffusion_ckpt=",
              "dasslab-predict": "input=", "dasslab-tables": "runs=", "dasslab-reproduce": "table=",
              "dasslab-export-weights": "ckpt="}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_entry_point_answers_help_with_a_usage_line_and_its_own_options_in_60_lines(name):
    module = SCRIPTS[name].split(":")[0]
    proc = subprocess.run([sys.executable, "-c", f"import sys; from {module} import main; sys.argv[0] = {name!r}; "
                           "sys.exit(main())", "--help"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.rstrip("\n").splitlines()
    assert lines[0].startswith(f"usage: {name} ") and len(lines) <= 60, (len(lines), lines[:3])
    options = proc.stdout.split("\noptions:\n", 1)[1]
    assert re.search(rf"^  {re.escape(OWN_OPTION[name])}", options, re.M), options
    if name != "dasslab-train":                       # another command's groups are not listed
        assert "experiment=" not in proc.stdout and "hparams_search" not in proc.stdout
    assert "${" not in proc.stdout                    # every interpolation of the template resolved


def test_the_whole_config_stays_behind_cfg_job():
    proc = subprocess.run([sys.executable, "-m", "dasslab.commands.train", "stage=source", "--cfg", "job"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) > 200 and "\nsegmenter:\n" in proc.stdout


def test_make_help_lists_every_target_with_a_recipe():
    makefile = (ROOT / "Makefile").read_text()
    targets = {t for line in makefile.splitlines() if (m := re.match(r"^([a-zA-Z0-9_-]+):", line))
               for t in [m.group(1)] if not t.startswith(".")}
    listed = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    shown = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {f"reproduce-table{i}" for i in range(1, 7)} <= shown
    assert targets <= shown, targets - shown


def test_the_launcher_default_is_the_same_in_make_the_command_and_the_readme(capsys, monkeypatch):
    from dasslab.commands.reproduce import main

    assert len(SCRIPTS) == 7 and SCRIPTS["dasslab-tables"] == "dasslab.commands.tables:main"
    assert all(target.startswith("dasslab.commands.") for target in SCRIPTS.values())   # the apps, together
    assert re.search(r"^LAUNCHER \?= auto$", (ROOT / "Makefile").read_text(), re.M)
    reference = (ROOT / "docs" / "reference.md").read_text()
    assert "`LAUNCHER=auto` (the default of\nboth `make` and `dasslab-reproduce`)" in reference
    monkeypatch.delenv("LAUNCHER", raising=False)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "auto (default)" in " ".join(capsys.readouterr().out.split())
