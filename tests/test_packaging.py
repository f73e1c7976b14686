"""What a user installs: the built wheel holds every file the package needs at run time (the TUI's
stylesheet), not only its Python modules. CI also installs that wheel outside the checkout and runs every
command from it (scripts/check_installed.py)."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_file_of_the_package(tmp_path):
    try:
        tracked = subprocess.run(["git", "ls-files", "layerdiff"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the package's files are not listed")
    needed = {f for f in tracked if not f.endswith(".py")}
    assert "layerdiff/tui/app.tcss" in needed  # the file a wheel once left out
    # built from a copy of the tracked files: a build/ folder left in the checkout would fill the gaps
    src = tmp_path / "src"
    for f in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.splitlines():
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("layerdiff-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert needed <= names, f"left out of the wheel: {sorted(needed - names)}"
    assert {f for f in tracked if f.endswith(".py")} <= names
