"""Every ```python block of docs/python.md runs, top to bottom in one fresh process, on the tiny BERT and tiny
tasks: the first block (the real base and GLUE) is replaced by their paths, nothing else changes."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import REPO, write_task_data

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
GLUE_DIRS = {"CoLA": "sentiment", "MRPC": "pairs", "STS-B": "similarity"}  # the tiny task standing in for each


def test_every_python_block_of_docs_python_runs(tmp_path, tiny_base):
    blocks = BLOCK.findall((REPO / "docs" / "python.md").read_text())
    assert len(blocks) > 5 and blocks[0].startswith("BASE = ")
    data = write_task_data(tmp_path / "data")
    glue = tmp_path / "glue"
    glue.mkdir()
    for name, tiny in GLUE_DIRS.items():
        (glue / name).symlink_to(data / tiny)
    setup = f"BASE = {str(tiny_base)!r}\nGLUE = {str(glue)!r}\n"
    script = "\n".join([setup, *(f"# docs/python.md block {i}\n{block}" for i, block in enumerate(blocks[1:], 2))])
    (tmp_path / "docs.py").write_text(script)
    run = subprocess.run([sys.executable, "docs.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--promote needs --new-version" in run.stdout and "task 'cola' has no version 9" in run.stdout
    assert "run 1: lr=0.001 adapter_size=64 from scratch best accuracy=" in run.stderr  # the logged notices
    assert (tmp_path / "reg-copy" / "registry.db").exists() and (tmp_path / "bundle" / "manifest.json").exists()
