"""The wheel: only `registry` lands in site-packages (cli/ and migrations/ ship as registry.cli and
registry.migrations), with the migrations' template and the dashboard's pages, and the `registry` command
pointing into it."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.helpers import REPO


def test_the_wheel_installs_one_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("adapter_registry-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if ".dist-info/" not in name} == {"registry"}
    assert {"registry/cli/main.py", "registry/migrations/env.py", "registry/migrations/script.py.mako",
            "registry/migrations/versions/0001_initial_schema.py", "registry/dashboard/app.py",
            "registry/dashboard/templates/task.html"} <= set(names)
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "registry = registry.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
