"""
The project as a user installs it: a wheel built from the source, installed
into a fresh virtual environment, where twistd must find every plugin.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

TOP = pathlib.Path(__file__).resolve().parent.parent


def pluginNames() -> set[str]:
    """
    The tapnames declared by the plugin files in the source tree.
    """
    names = set()
    for path in (TOP / "twisted" / "plugins").glob("*.py"):
        names.update(re.findall(r'ServiceMaker\([^)]*?"([a-z0-9_-]+)"\s*\)', path.read_text(), re.S))
    return names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(
        TOP, src, dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(".venv", ".git", "var", "build", "dist", "*.egg-info", "__pycache__", "dropin.cache", ".hypothesis"),
    )
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
        check=True, capture_output=True,
    )
    (whl,) = out.glob("*.whl")
    return whl


def test_sourceDeclaresThePlugins():
    """The source tree declares the plugins this test looks for, so the next test cannot pass vacuously."""
    assert "bftp" in pluginNames()


def test_wheelShipsPluginsButNotTheirPackageInit(wheel):
    """The wheel carries twisted/plugins/*.py but never a twisted/plugins/__init__.py or a dropin.cache."""
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/bftp_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names
    assert not any(n.endswith("dropin.cache") for n in names)


def test_twistdListsPluginsInFreshVenv(wheel, tmp_path):
    """Installed from the wheel into a new virtual environment, `twistd --help` lists every plugin of the project."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    help = subprocess.run([str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True, check=True)
    listed = set(re.findall(r"^\s{4}(\S+)\s", help.stdout, re.M))
    assert pluginNames() <= listed, (pluginNames() - listed, help.stdout)
    assert (venv / "bin" / "bftp").exists()
