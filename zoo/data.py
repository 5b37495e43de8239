"""Where a task's data files come from, checked against the registry before anything reads them.

``registry.yaml: datasets`` declares each data set's canonical public source and, per file, its sha256 and
(where the file is public as it is) a download address. A file is read from ``$ZOO_DATA/<dataset>/<file>``
when ``ZOO_DATA`` is set; otherwise it is downloaded once into ``$ZOO_HOME/data/<dataset>/<file>``. Either
way its sha256 must match the registry's, so a benchmark never runs on a file other than the one it claims.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from encoders import ZooError
from zoo.artifacts import atomic_write, sha256_file, zoo_home
from zoo.registry import DataFile, TaskSpec


def data_file(spec: TaskSpec, name: str) -> Path:
    """The local, hash-checked path of one of ``spec``'s data files (``spec.data.file`` or ``test_file``)."""
    if not spec.data.dataset or not name:
        raise ZooError(f"task {spec.name!r} names no data.dataset and data.file in its registry entry; give its "
                       "table with --data")
    declared = spec.data.files.get(name, DataFile())
    where = f"{spec.data.dataset}/{name}"
    root = os.environ.get("ZOO_DATA")
    if root:
        path = Path(root).expanduser() / spec.data.dataset / name
        if not path.is_file():
            raise ZooError(f"task {spec.name!r}: no {where} under ZOO_DATA={root}"
                           + (f" (source: {spec.data.source})" if spec.data.source else ""))
    else:
        path = zoo_home() / "data" / spec.data.dataset / name
        if not path.is_file():
            if not declared.url:
                raise ZooError(f"task {spec.name!r}: {where} has no download address (it is derived from "
                               f"{spec.data.source or 'its source'}); set ZOO_DATA to a folder holding {where}")
            download(declared, path)
    if declared.sha256 and (got := sha256_file(path)) != declared.sha256:
        raise ZooError(f"{path}: sha256 {got} is not the registry's {declared.sha256} for {where}; "
                       "this is not the file the benchmarks were run on")
    return path


def findable(spec: TaskSpec) -> bool:
    """Whether ``data_file`` can give the task's training table: under ZOO_DATA, downloaded, or to download."""
    if not spec.data.dataset or not spec.data.file:
        return False
    root = os.environ.get("ZOO_DATA")
    if root:
        return (Path(root).expanduser() / spec.data.dataset / spec.data.file).is_file()
    return ((zoo_home() / "data" / spec.data.dataset / spec.data.file).is_file()
            or bool(spec.data.files.get(spec.data.file, DataFile()).url))


def download(declared: DataFile, path: Path) -> None:
    """Fetch ``declared.url`` (one member of it, for a tar archive) into ``path``, with a progress bar; the
    file appears only once it is whole and its hash checked."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ZooError(f"{path.name}: not in {path.parent} and HF_HUB_OFFLINE is set; set ZOO_DATA instead")
    archive = path.with_name(f".{path.name}.download")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(declared.url, timeout=60) as response, open(archive, "wb") as out, tqdm(
                total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                desc=f"download {path.name}") as bar:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))
    except OSError as err:
        archive.unlink(missing_ok=True)
        raise ZooError(f"{path.name}: cannot download {declared.url}: {err}") from None

    def unpack(tmp: Path) -> None:
        if declared.member:
            with tarfile.open(archive) as tar:
                if declared.member not in tar.getnames():
                    raise ZooError(f"{declared.url}: no {declared.member!r} in the archive")
                with tar.extractfile(declared.member) as member, open(tmp, "wb") as out:
                    shutil.copyfileobj(member, out)
        else:
            shutil.copyfile(archive, tmp)
        if declared.sha256 and (got := sha256_file(tmp)) != declared.sha256:
            raise ZooError(f"{declared.url}: {path.name} has sha256 {got}, not the registry's {declared.sha256}")

    try:
        atomic_write(path, unpack)
    finally:
        archive.unlink(missing_ok=True)
