"""The distribution carries what an install needs: the registry (its real content, not a link) and every task's
bundled weights; and `zoo bench --bundle` writes only into a source tree. (.ci/run installs the wheel into a
fresh environment and runs `zoo list` and `zoo predict` outside the checkout; this is the fast check.)"""
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import zoo.bench
from zoo.bench import bundle_dir
from zoo.cli import main
from zoo.registry import BUILTIN_REGISTRY
from tests.conftest import ROOT

SKIP = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """A wheel and an sdist of this tree, built from a copy (setuptools leaves build/ and egg-info behind, and a
    stale build/lib would hide a file missing from the tree)."""
    tmp = tmp_path_factory.mktemp("dist")
    shutil.copytree(ROOT, tmp / "src", symlinks=True, ignore=SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp), str(tmp / "src")], check=True)
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                    "build_meta.build_sdist(sys.argv[1])", str(tmp)], check=True, cwd=tmp / "src",
                   stdout=subprocess.DEVNULL)
    return {"wheel": next(tmp.glob("scizoo-*.whl")), "sdist": next(tmp.glob("scizoo-*.tar.gz"))}


def _bundled_tasks() -> list[str]:
    tasks = yaml.safe_load(BUILTIN_REGISTRY.read_text())["tasks"]
    return sorted(name for name, entry in tasks.items() if entry.get("weights", "bundled") == "bundled")


def _expected_files() -> dict[str, bytes]:
    """Package path -> content of what an install needs beyond the code."""
    files = {"zoo/registry.yaml": BUILTIN_REGISTRY.read_bytes()}
    for task in _bundled_tasks():
        folder = ROOT / "zoo" / "weights" / task
        assert (folder / "model.safetensors").is_file() and (folder / "config.yaml").is_file(), folder
        files.update({f"zoo/weights/{task}/{p.relative_to(folder)}": p.read_bytes()
                      for p in sorted(folder.rglob("*")) if p.is_file()})
    return files


def test_the_registry_is_one_file_inside_the_package():
    assert BUILTIN_REGISTRY == ROOT / "zoo" / "registry.yaml" and not BUILTIN_REGISTRY.is_symlink()
    top = ROOT / "registry.yaml"  # the design card's place: a link to the package's file
    assert top.is_symlink() and top.resolve() == BUILTIN_REGISTRY.resolve()


def test_the_wheel_carries_the_registry_and_every_bundled_model(built):
    with zipfile.ZipFile(built["wheel"]) as wheel:
        names = set(wheel.namelist())
        for path, content in _expected_files().items():
            assert path in names, f"{path} is not in {built['wheel'].name}"
            info = wheel.getinfo(path)
            assert (info.external_attr >> 16) & 0o170000 != 0o120000, f"{path} is a link in the wheel"
            assert wheel.read(path) == content, f"{path} in the wheel differs from the source"
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "zoo = zoo.cli:console" in wheel.read(entry_points).decode()
        for package in ("zoo", "encoders", "fusion", "tasks"):
            assert f"{package}/__init__.py" in names


def test_the_sdist_carries_the_registry_as_a_file(built):
    with tarfile.open(built["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1]: m for m in sdist.getmembers() if "/" in m.name}
        for path in ("zoo/registry.yaml", *(f"zoo/weights/{t}/model.safetensors" for t in _bundled_tasks())):
            assert path in members and members[path].isfile(), f"{path} is not a file in {built['sdist'].name}"
        assert sdist.extractfile(members["zoo/registry.yaml"]).read() == BUILTIN_REGISTRY.read_bytes()


def test_bundle_writes_into_this_source_tree():
    assert bundle_dir() == ROOT / "zoo" / "weights"


def test_bundle_from_an_installed_package_fails_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    installed = tmp_path / "lib" / "python3.11" / "site-packages" / "zoo" / "weights"
    installed.mkdir(parents=True)
    monkeypatch.setattr(zoo.bench, "BUNDLED", installed)
    with pytest.raises(zoo.bench.ZooError, match="--bundle writes into a source tree of scizoo"):
        bundle_dir()
    (installed.parent.parent / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    with pytest.raises(zoo.bench.ZooError, match="installed at"):
        bundle_dir()
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "no-data"))  # it must fail before it looks for data
    assert main(["bench", "molecule-solubility", "--bundle"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error: --bundle writes into a source tree") and err.count("\n") == 1
