"""effzoo data download: planning, budget, resume and the disk check against a local fake hub."""
from pathlib import Path

import pytest

from effzoo.data import DataError
from effzoo.data.download import RemoteFile, config_folder, download, plan_download
from effzoo.errors import EffzooError


class FakeHub:
    """Serves files from memory; ``fail`` maps a path to how many times fetching it fails first."""

    def __init__(self, files, fail=None):
        self.files, self.fail, self.fetched = files, dict(fail or {}), []

    def list_files(self, repo_id, folder):
        return [RemoteFile(p, len(b)) for p, b in self.files.items() if p.startswith(folder + "/")]

    def fetch(self, repo_id, path, out):
        self.fetched.append(path)
        if self.fail.get(path, 0) > 0:
            self.fail[path] -= 1
            raise ConnectionError("connection reset")
        local = Path(out) / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.files[path])
        return local


FILES = {f"sample/10BT/{i:03d}_00000.parquet": bytes([i]) * (100 + i) for i in range(6)}
FILES["sample/10BT/README.md"] = b"not data"
FILES["data/CC-MAIN-2024-10/000.parquet"] = b"x" * 50


def roomy(_):
    return (10**12, 0, 10**12)


def test_config_folders():
    assert config_folder("sample-350BT") == "sample/350BT"
    assert config_folder("CC-MAIN-2024-10") == "data/CC-MAIN-2024-10"


def test_plan_respects_file_and_byte_budgets(tmp_path):
    hub = FakeHub(FILES)
    plan = plan_download(hub, tmp_path, config="sample-10BT", max_files=4)
    assert [f.path[-17:] for f in plan.files] == [f"{i:03d}_00000.parquet" for i in range(4)]
    plan = plan_download(hub, tmp_path, config="sample-10BT", max_bytes=300)
    assert len(plan.files) == 2 and plan.bytes_total == 201
    assert len(plan_download(hub, tmp_path, config="sample-10BT", max_bytes=1).files) == 1
    with pytest.raises(DataError, match="no .parquet files"):
        plan_download(hub, tmp_path, config="sample-1T")


def test_download_is_parallel_resumable_and_retries(tmp_path):
    hub = FakeHub(FILES, fail={"sample/10BT/002_00000.parquet": 5})
    plan = plan_download(hub, tmp_path, config="sample-10BT")
    with pytest.raises(DataError, match="1 of 6 files failed .*002_00000.parquet.*connection reset"):
        download(plan, hub, workers=3, retries=1, usage=roomy)
    assert hub.fetched.count("sample/10BT/002_00000.parquet") == 2
    # rerun: only the missing file is fetched, after one more failure it succeeds
    hub.fail = {"sample/10BT/002_00000.parquet": 1}
    hub.fetched.clear()
    plan = plan_download(hub, tmp_path, config="sample-10BT")
    assert [f.path for f in plan.missing] == ["sample/10BT/002_00000.parquet"] and len(plan.present) == 5
    files = download(plan, hub, workers=3, retries=1, usage=roomy)
    assert len(files) == 6 and hub.fetched == ["sample/10BT/002_00000.parquet"] * 2
    # a truncated local file counts as missing
    (tmp_path / "sample/10BT/004_00000.parquet").write_bytes(b"\x04")
    assert [f.path for f in plan_download(hub, tmp_path, config="sample-10BT").missing] == \
           ["sample/10BT/004_00000.parquet"]


def test_free_space_is_checked_before_starting(tmp_path):
    hub = FakeHub(FILES)
    plan = plan_download(hub, tmp_path / "new" / "dir", config="sample-10BT")
    with pytest.raises(EffzooError, match="not enough free disk space"):
        download(plan, hub, usage=lambda p: (10**6, 10**6 - 300, 300))
    assert hub.fetched == []
