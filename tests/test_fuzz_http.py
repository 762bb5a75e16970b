"""The OpenAPI document is the truth: Schemathesis, run against the real server, finds nothing.

Every check Schemathesis has (no 5xx; status codes, content types, bodies and headers as documented; schema-valid
bodies accepted, schema-invalid ones refused; auth enforced), over every operation, in every phase (the schema's
examples, boundary values, random bodies). The server is `registry serve` on loopback with a single-text and a
pair task, a bearer token, and limits small enough that any schema-valid body fits --max-body-bytes.
Budget: FUZZ_EXAMPLES examples per operation (`make test`: a few; `make fuzz`: many).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.test_serve_limits import TOKEN, served, start, stopped, task_data  # noqa: F401

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SCHEMATHESIS = str(Path(sys.executable).with_name("st"))


def test_schemathesis_finds_nothing(served, tmp_path):  # noqa: F811
    process, url = start(served, "--max-inputs", "8", "--max-text-chars", "300", "--max-wait-ms", "1",
                         env={"REGISTRY_SERVE_TOKEN": TOKEN})
    config = tmp_path / "schemathesis.toml"  # 413 is the documented answer to a body over a limit of the schema
    config.write_text('[checks.negative_data_rejection]\nexpected-statuses = ["400", "401", "403", "404", "405", '
                      '"406", "409", "413", "415", "422", "428", "429"]\n')
    try:
        result = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(config), "run", f"{url}/openapi.json", "--checks", "all",
             "--max-examples", str(EXAMPLES),
             "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "60", "--seed", "21",
             "--generation-database", "none", "--no-color"],
            capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    finally:
        server_log = stopped(process)
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{result.stderr[-2000:]}\nserver:\n{server_log[-2000:]}"
