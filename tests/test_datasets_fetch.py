"""Finding and downloading the public datasets, served from the shipped files over loopback HTTP."""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from xqg_ray.datasets import load_xquad
from xqg_ray.datasets.fetch import BASE_URL_ENV, CACHE_ENV, download_dataset, ensure_dataset
from xqg_ray.errors import ConfigError, StorageError


class Mirror:
    """A static file server over a folder laid out like shared/data; counts the requests."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                mirror.requests.append(self.path)

        handler = functools.partial(Handler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve = functools.partial(self.server.serve_forever, poll_interval=0.05)
        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def mirror(shared_data):
    server = Mirror(shared_data)
    yield server
    server.stop()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("name", "folder"), [("xquad", "xquad"), ("xquad_r", "xquad-r")])
def test_download_matches_the_shipped_files_and_reuses_the_cache(
    tmp_path, shared_data, mirror, name, folder
):
    target = Path(download_dataset(name, cache_dir=str(tmp_path), base_url=mirror.url))
    assert target == tmp_path / folder
    shipped = sorted(p.name for p in (shared_data / folder).glob("*.json"))
    assert sorted(p.name for p in target.iterdir()) == shipped  # no temporary files left
    for filename in shipped:
        assert sha256(target / filename) == sha256(shared_data / folder / filename)
    assert len(mirror.requests) == len(shipped)

    mirror.stop()  # the network is gone: a second call must work from the cache alone
    again = download_dataset(name, cache_dir=str(tmp_path), base_url=mirror.url)
    assert again == str(target)
    assert len(mirror.requests) == len(shipped)


def test_downloaded_corpus_loads(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, mirror.url)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = download_dataset("xquad")
    assert folder == str(tmp_path / "cache" / "xquad")
    assert load_xquad(folder).queries.num_rows == 1190 * 11


def test_corrupted_download_is_rejected_and_not_kept(tmp_path, shared_data):
    served = tmp_path / "served" / "xquad"
    shutil.copytree(shared_data / "xquad", served)
    corrupt = served / "xquad.de.json"
    corrupt.write_bytes(corrupt.read_bytes().replace(b"Panthers", b"Panthera", 1))
    server = Mirror(tmp_path / "served")
    try:
        with pytest.raises(StorageError) as err:
            download_dataset("xquad", cache_dir=str(tmp_path / "cache"), base_url=server.url)
    finally:
        server.stop()
    assert "xquad.de.json" in str(err.value) and "SHA-256" in str(err.value)
    cache = tmp_path / "cache" / "xquad"
    assert not (cache / "xquad.de.json").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_damaged_cache_file_is_downloaded_again(tmp_path, shared_data, mirror):
    folder = Path(download_dataset("xquad_r", cache_dir=str(tmp_path), base_url=mirror.url))
    (folder / "th.json").write_text("truncated")
    before = len(mirror.requests)
    download_dataset("xquad_r", cache_dir=str(tmp_path), base_url=mirror.url)
    assert mirror.requests[before:] == ["/xquad-r/th.json"]
    assert sha256(folder / "th.json") == sha256(shared_data / "xquad-r" / "th.json")


def test_unreachable_mirror_names_the_url(tmp_path, shared_data):
    server = Mirror(shared_data)
    server.stop()
    with pytest.raises(StorageError) as err:
        download_dataset("xquad", cache_dir=str(tmp_path), base_url=server.url)
    assert server.url in str(err.value) and "data_dir" in str(err.value)


def test_ensure_dataset_prefers_data_dir_then_shared(tmp_path, shared_data):
    assert ensure_dataset("xquad", str(shared_data / "xquad")) == str(shared_data / "xquad")
    assert Path(ensure_dataset("xquad_r", None)) == shared_data / "xquad-r"
    with pytest.raises(StorageError) as err:
        ensure_dataset("xquad", str(tmp_path / "absent"))
    assert "absent" in str(err.value)
    (tmp_path / "notes.txt").write_text("no data here")
    with pytest.raises(StorageError) as err:
        ensure_dataset("xquad", str(tmp_path))
    assert str(tmp_path) in str(err.value) and "xquad" in str(err.value)
    with pytest.raises(ConfigError):
        ensure_dataset("generic", None)
