"""The wheel: it holds every module of every wing and every prompt template, and an install of that wheel alone
works from outside the repo (`packages = ["hf_sft"]` once shipped a wheel without its subpackages).

The wheel is built offline from a copy of the sources (a build in the checkout would leave build/ and
*.egg-info there, and a stale build/lib would leak into the wheel). The clean venv has no pip and no copy
of the dependencies: a .pth line puts this venv's site-packages on its sys.path, and since the .pth files
of a directory named that way are not run, the editable-install finder of the checkout is not either, so
hf_sft can only come from the wheel (checked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.expensive_runs import start_once
from tests.helpers import REPO_ROOT

REPO = Path(REPO_ROOT)
WINGS = ("data", "training", "generation", "grading", "evaluation", "reporting")
pytestmark = pytest.mark.xdist_group("wheel")  # both tests read one wheel build


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    start_once(tmp_path_factory, "wheel_build")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "hf_sft", src / "hf_sft", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "prompts", src / "prompts")
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [path] = out.glob("hf_sft-*.whl")
    return path


def test_the_wheel_holds_every_module_and_every_prompt(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for wing in WINGS:
        assert f"hf_sft/{wing}/__init__.py" in names, wing
    modules = {str(p.relative_to(REPO)) for p in (REPO / "hf_sft").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    prompts = sorted((REPO / "prompts").glob("*.prompt"))
    assert prompts and {f"hf_sft/prompts/{p.name}" for p in prompts} <= names
    assert {n.split("/")[0] for n in names} == {"hf_sft", "hf_sft-0.1.0.dist-info"}  # no tests/, no top-level prompts/
    entry_points = zipfile.ZipFile(wheel).read("hf_sft-0.1.0.dist-info/entry_points.txt").decode()
    assert "hf-sft-report = hf_sft.report:main" in entry_points


INSTALLED = """
import json, sys
import hf_sft, hf_sft.evaluation.async_callback
from hf_sft.data.prompts import PROMPTS_DIR, load_template
print(json.dumps({"files": [hf_sft.__file__, hf_sft.evaluation.async_callback.__file__], "prompts": str(PROMPTS_DIR),
                  "templates": sorted(p.stem for p in PROMPTS_DIR.glob("*.prompt")),
                  "r1_zero": load_template("r1_zero")}))
"""


def test_a_clean_venv_with_only_the_wheel_imports_the_package_and_loads_a_prompt(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    zipfile.ZipFile(wheel).extractall(site)  # what pip's install does for a pure-Python wheel, less the scripts
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run = subprocess.run([str(python), "-I", "-c", INSTALLED], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.splitlines()[-1])
    for path in [*got["files"], got["prompts"]]:
        assert Path(path).is_relative_to(site) and not Path(path).resolve().is_relative_to(REPO), path
    assert got["templates"] == sorted(p.stem for p in (REPO / "prompts").glob("*.prompt"))
    assert got["r1_zero"] == (REPO / "prompts" / "r1_zero.prompt").read_text()
