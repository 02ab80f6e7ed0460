"""Nothing silent: every bad input or fault is refused before any work, in one line naming it.

The cases (tests/bad_inputs.py) cover settings (non-finite, out of range, wrong type, unknown choice,
image sizes the networks cannot take, the pixel cap), checkpoints (wrong kind, non-finite weights, other
classes, other architecture, weights of other dtypes or shapes, damaged, symlink loops), data files
(encoding, ignored extensions, labels whose bytes are JPEG/WebP/GIF or whose pixels are colours, labels
without images and images without labels, links that lead nowhere, pixel bombs), command-line
interpolations and output paths, and side files (manifest, prediction record, run config, job record),
across dasslab-train, -translate, -eval, -predict, -export-weights, -reproduce and -tables. Each runs as
the real command line (the entry point's ``main()`` with ``sys.argv``, in one child process) and must:
exit with status 2, print exactly one line on stderr (``error: …``, no traceback) that holds the setting
or file and what was expected, and leave no output (nothing but Hydra's ``.hydra/`` and log in its run
folder: no checkpoint, no metrics, no translated or predicted image, no record rewritten).

``DASSLAB_BAD_INPUTS_TABLE=FILE`` writes the note's table (input | command | line printed) to FILE.
"""

import os
from pathlib import Path

import pytest
from bad_inputs import CONF_DIR, cases, error_lines, make_world, plant_damaged_done, run_cases, table


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_inputs")
    world = make_world(tmp)
    plant_damaged_done(world, CONF_DIR)
    cs = cases(world)
    results = run_cases(cs, tmp)
    if os.environ.get("DASSLAB_BAD_INPUTS_TABLE"):
        Path(os.environ["DASSLAB_BAD_INPUTS_TABLE"]).write_text(table(cs, results, tmp))
    return cs, results


COMMANDS = ("train", "translate", "eval", "predict", "export_weights", "reproduce", "tables")
# what issue 31 found handled badly: each must be a case of the table
ISSUE_31 = ("label holds JPEG bytes", "label is RGB", "label without image", "eval: label holds WebP bytes",
            "pixel cap", "predict: decompression bomb", "init_ckpt int32", "eval: int32 safetensors",
            "predict: int32 safetensors", "translate: DDPM int32", "backbone.weights uint8", "resume int32",
            "predict: weight of another shape", "dataset.root=${oops}", "export: out inside a file",
            "predict: output = input", "reproduce: --seeds -3", "reproduce: --seeds 0", "image is a symlink loop",
            "eval: checkpoint symlink loop", "predict: image is a symlink loop")


@pytest.mark.slow
def test_there_are_at_least_120_cases_across_the_seven_commands(outcome):
    cs, _ = outcome
    assert len(cs) >= 120
    commands = {module for module, *_ in cs.values()}
    assert commands == {f"dasslab.commands.{c}" for c in COMMANDS}
    assert not [name for name in ISSUE_31 if name not in cs]


@pytest.mark.slow
def test_each_bad_input_is_one_line_before_any_work(outcome):
    cs, results = outcome
    failures = []
    for name, (_, _, must, _) in cs.items():
        r = results[name]
        lines = error_lines(r["stderr"])
        problems = []
        if r["code"] != 2:
            problems.append(f"exit {r['code']!r}")
        if len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in r["stderr"]:
            problems.append(f"stderr is not one 'error:' line: {r['stderr'][-1500:]!r}")
        else:
            problems += [f"the line lacks {m!r}" for m in must if m not in lines[0]]
        if r["written"]:
            problems.append(f"wrote {r['written'][:3]}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)
