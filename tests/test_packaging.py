"""The built wheel installs outside the checkout and works: ``python -m build``, a fresh
virtualenv, a non-editable install, then one real round through the installed ``verifyd``
and ``edgespec`` (and the installed ``edgespec serve`` with its page).

The fresh environment reaches torch and the other large dependencies through a ``.pth``
line to this environment's site-packages instead of downloading them again; the wheel's
own requirements are then checked against what it sees.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import venv
import zipfile
from pathlib import Path

import pytest
import requests
from edgespec.tools.serve_proc import start_serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the checkout's files (the tree stays untouched)."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (tmp / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp / "src" / name)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                    "--skip-dependency-check", "--outdir", str(tmp / "dist"),
                    str(tmp / "src")], check=True, capture_output=True, timeout=600)
    (built,) = (tmp / "dist").glob("edgespec-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed (not editable); returns its bin/."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    (Path(site.stdout.strip()) / "_edgespec_test_deps.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    return env_dir / "bin"


def test_the_wheel_carries_every_package_and_the_chat_page(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for wanted in ("edgespec/__init__.py", "edgespec/edge_client/env_options.py",
                   "edgespec/edge_client/serve/app.py",
                   "edgespec/edge_client/serve/static/index.html",
                   "edgespec/verify_daemon/metrics.py", "edgespec/models/hub.py",
                   "edgespec/wire/codec.py", "edgespec/tools/daemon_proc.py"):
        assert wanted in names, wanted
    assert not [n for n in names if n.startswith(("tests/", "edgespec/tests/"))]


def test_installed_commands_run_a_real_round_outside_the_checkout(installed, target_dir,
                                                                   tmp_path):
    where = subprocess.run(
        [str(installed / "python"), "-c", _CHECK_INSTALL], cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed.parent)), where.stdout
    log = tmp_path / "verifyd.log"
    with log.open("w") as out:
        daemon = subprocess.Popen([str(installed / "verifyd"), "--port", "0", "--target",
                                   str(target_dir), "--threads", "1"], cwd=tmp_path,
                                  stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        endpoint = _ready(daemon, log)
        done = subprocess.run(
            [str(installed / "edgespec"), "generate", "--server", endpoint, "--threads", "1",
             "--prompt", "Say hi.", "--max-tokens", "8", "--json"], cwd=tmp_path,
            capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["stats"]["generated"] > 0
        served = start_serve(endpoint, tmp_path / "serve.log",
                             command=[str(installed / "edgespec")])
        try:
            assert "<title>edgespec chat</title>" in requests.get(served.url, timeout=30).text
            reply = requests.post(f"{served.url}v1/completions", timeout=120, json={
                "prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0}).json()
            assert reply["usage"]["completion_tokens"] > 0, reply
        finally:
            served.stop()
    finally:
        daemon.terminate()
        daemon.wait(20)


_CHECK_INSTALL = """
import importlib.metadata as md, sys
from packaging.requirements import Requirement
import edgespec
missing = []
for line in md.requires("edgespec") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(str(req)); continue
    if not req.specifier.contains(version, prereleases=True):
        missing.append(f"{req} (have {version})")
if missing:
    sys.exit(f"unsatisfied requirements: {missing}")
print(edgespec.__file__)
"""


def _ready(process: subprocess.Popen[str], log: Path, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = re.search(r"verifyd ready on (\S+)", log.read_text())
        if match:
            return match.group(1)
        assert process.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"installed verifyd did not start:\n{log.read_text()}")
