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
    """Installed from the wheel into a new virtual environment, `twistd --help` lists every plugin, and every console script runs --help."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    help = subprocess.run([str(venv / "bin" / "twistd"), "--help"], capture_output=True, text=True, check=True)
    listed = set(re.findall(r"^\s{4}(\S+)\s", help.stdout, re.M))
    assert pluginNames() <= listed, (pluginNames() - listed, help.stdout)
    # Every console script runs from this plain install (no extras).
    scripts = consoleScripts()
    assert "bftp" in scripts and "concurrency-demo" in scripts
    for name in scripts:
        run = subprocess.run([str(venv / "bin" / name), "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "Traceback" not in run.stderr, (name, run.stderr[-2000:])
        text = (run.stdout + run.stderr).lower()
        assert "usage" in text or "options:" in text, (name, run.stdout[-500:])


def consoleScripts() -> list[str]:
    """
    The console scripts setup.cfg declares.
    """
    import configparser

    config = configparser.ConfigParser()
    config.read(TOP / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines if "=" in line]
