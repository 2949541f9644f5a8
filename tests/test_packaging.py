"""The built wheel holds every package and data file of the source tree: a package folder that
packaging misses (as the Dockerfile once missed ``handlers/``) fails here, not in a user's install."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the tree's build inputs, so the build writes nothing (build/, *.egg-info) into the checkout.
    tree = out / "tree"
    for name in ("pyproject.toml", "README.md"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(SRC), str(tree / "src")], check=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(out),
        str(tree),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("jpegweights-*.whl")
    return zipfile.ZipFile(path)


def tree_files() -> set[str]:
    """Every file under src/ that is not a build by-product, as a path inside the wheel."""
    skip = ("__pycache__", ".egg-info")
    return {
        p.relative_to(SRC).as_posix()
        for p in SRC.rglob("*")
        if p.is_file() and not any(s in part for part in p.relative_to(SRC).parts for s in skip)
    }


def test_every_package_and_data_file_is_in_the_wheel(wheel):
    names = set(wheel.namelist())
    missing = sorted(tree_files() - names)
    assert not missing, f"in src/ but not in the wheel: {missing[:20]}"


def test_every_package_folder_is_a_package():
    """A folder of modules without __init__.py would be skipped by packages.find."""
    folders = {p.parent for p in (SRC / "jpegweights").rglob("*.py") if "__pycache__" not in p.parts}
    bare = sorted(str(f.relative_to(SRC)) for f in folders if not (f / "__init__.py").is_file())
    assert not bare, f"folders with modules but no __init__.py: {bare}"
