"""Fetch FineWeb-Edu (or any dataset repo of parquet files) from the Hugging Face Hub or a mirror:
plan (which files, how many bytes), check free disk space, then download in parallel threads.

Resuming: a file already in ``out`` with the size the hub lists is skipped, and ``huggingface_hub``
continues partially downloaded files from its ``.incomplete`` parts, so rerunning the same command
finishes an interrupted download.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from effzoo.errors import EffzooError

from .errors import DataError

FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"


def config_folder(config: str) -> str:
    """Repo folder of a FineWeb-Edu config: ``sample-350BT`` -> ``sample/350BT``,
    ``CC-MAIN-2024-10`` -> ``data/CC-MAIN-2024-10``, ``default`` -> ``data``; anything else is a folder."""
    if config.startswith("sample-"):
        return f"sample/{config.removeprefix('sample-')}"
    if config.startswith("CC-MAIN-"):
        return f"data/{config}"
    return "data" if config == "default" else config.strip("/")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int


class Source(Protocol):
    """Where files come from: the hub (``HubSource``) or a fake in tests."""

    def list_files(self, repo_id: str, folder: str) -> list[RemoteFile]: ...
    def fetch(self, repo_id: str, path: str, out: Path) -> Path: ...


class HubSource:
    """``huggingface_hub`` against ``endpoint`` (a mirror such as https://hf-mirror.com, or the
    ``HF_ENDPOINT`` environment variable, or the hub itself)."""

    def __init__(self, endpoint: str | None = None, token: str | None = None, revision: str | None = None) -> None:
        try:
            from huggingface_hub import HfApi
        except ImportError as exc:  # pragma: no cover - environment dependent
            raise EffzooError("downloading needs huggingface_hub: pip install 'effzoo[data]'") from exc
        self.endpoint = endpoint or os.environ.get("HF_ENDPOINT")
        self.token, self.revision = token, revision
        self.api = HfApi(endpoint=self.endpoint, token=token)

    def list_files(self, repo_id: str, folder: str) -> list[RemoteFile]:
        from huggingface_hub.hf_api import RepoFile

        entries = self.api.list_repo_tree(repo_id, path_in_repo=folder or None, recursive=True,
                                          repo_type="dataset", revision=self.revision)
        return [RemoteFile(e.path, int(e.size)) for e in entries if isinstance(e, RepoFile)]

    def fetch(self, repo_id: str, path: str, out: Path) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, path, repo_type="dataset", local_dir=out, endpoint=self.endpoint,
                                    token=self.token, revision=self.revision))


@dataclass
class DownloadPlan:
    repo_id: str
    folder: str
    out: Path
    files: list[RemoteFile]
    present: list[RemoteFile] = field(default_factory=list)
    missing: list[RemoteFile] = field(default_factory=list)

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def bytes_needed(self) -> int:
        return sum(f.size for f in self.missing)


def plan_download(
    source: Source, out: str | os.PathLike[str], *, repo_id: str = FINEWEB_EDU, config: str = "sample-350BT",
    max_files: int | None = None, max_bytes: int | None = None, suffix: str = ".parquet",
) -> DownloadPlan:
    """The first files of ``config`` (sorted by path) within ``max_files`` and ``max_bytes`` (at least
    one file), split into those already in ``out`` with the right size and those still to fetch."""
    folder = config_folder(config)
    listed = sorted((f for f in source.list_files(repo_id, folder) if f.path.endswith(suffix)), key=lambda f: f.path)
    if not listed:
        raise DataError(f"no {suffix} files under {folder!r} in {repo_id}; check --config")
    chosen: list[RemoteFile] = []
    total = 0
    for f in listed:
        if max_files is not None and len(chosen) >= max_files:
            break
        if max_bytes is not None and chosen and total + f.size > max_bytes:
            break
        chosen.append(f)
        total += f.size
    out = Path(out)
    plan = DownloadPlan(repo_id, folder, out, chosen)
    for f in chosen:
        local = out / f.path
        (plan.present if local.is_file() and local.stat().st_size == f.size else plan.missing).append(f)
    return plan


def check_free_space(out: Path, needed: int, *, margin: float = 1.05,
                     usage: Callable[[str], tuple] = shutil.disk_usage) -> None:
    """Refuse to start when the disk holding ``out`` has less than ``needed * margin`` bytes free."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    free = usage(str(probe))[2]
    if free < needed * margin:
        raise EffzooError(f"not enough free disk space in {probe}: need {needed * margin / 1e9:.2f} GB "
                          f"(download {needed / 1e9:.2f} GB + 5%), {free / 1e9:.2f} GB free")


def download(plan: DownloadPlan, source: Source, *, workers: int = 4, retries: int = 2, progress: bool = False,
             usage: Callable[[str], tuple] = shutil.disk_usage) -> list[Path]:
    """Fetch ``plan.missing`` with ``workers`` threads; each file is tried ``1 + retries`` times and
    checked against the listed size. Files that still fail are named in one error at the end."""
    from tqdm import tqdm

    check_free_space(plan.out, plan.bytes_needed, usage=usage)
    plan.out.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    done = [plan.out / f.path for f in plan.present]

    def fetch(f: RemoteFile) -> Path:
        error = ""
        for _ in range(1 + retries):
            try:
                local = source.fetch(plan.repo_id, f.path, plan.out)
                if local.stat().st_size == f.size:
                    return local
                error = f"size {local.stat().st_size} differs from the listed {f.size}"
            except Exception as exc:  # OSError, EffzooError, and network/hub errors of many types
                error = f"{type(exc).__name__}: {exc}"
        raise DataError(error, path=f.path)

    bar = tqdm(total=plan.bytes_needed, unit="B", unit_scale=True, desc="downloading", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = {pool.submit(fetch, f): f for f in plan.missing}
        for job in as_completed(jobs):
            f = jobs[job]
            try:
                done.append(job.result())
            except DataError as exc:
                failures[f.path] = str(exc)
            bar.update(f.size)
    bar.close()
    if failures:
        raise DataError(f"{len(failures)} of {len(plan.missing)} files failed (rerun to resume): "
                        + "; ".join(failures.values()))
    return sorted(done)
