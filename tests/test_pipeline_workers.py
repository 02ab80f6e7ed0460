"""A pipeline's job processes end with the pipeline: a killed pipeline leaves no job running on."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:          # a zombie waiting for its reaper is gone too
        return fh.read().split()[2] != "Z"


def test_worker_dies_when_the_pipeline_process_is_killed(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import multiprocessing as mp, time
        def work(path):
            from dasslab.workflow.jobrun import die_with_parent
            import os
            die_with_parent()
            open(path, "w").write(str(os.getpid()))
            time.sleep(120)
        if __name__ == "__main__":
            p = mp.get_context("spawn").Process(target=work, args=({str(pid_file)!r},))
            p.start()
            time.sleep(120)
    """)
    script = tmp_path / "parent.py"
    script.write_text(parent)
    proc = subprocess.Popen([sys.executable, str(script)])
    deadline = time.time() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, "the worker did not start"
        time.sleep(0.2)
    child = int(pid_file.read_text())
    assert _alive(child)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while _alive(child) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(child), "the worker outlived its pipeline"
