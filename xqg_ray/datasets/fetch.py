"""Find or download the public benchmark files, so a fresh clone works without ../shared.

Order: an explicit `data_dir`; else `../shared/data/<folder>` beside the project (dev and CI);
else a cache (`$XQG_RAY_CACHE` or `~/.cache/xqg-ray`, then `<folder>`) filled from the public
URLs. Every downloaded file is checked against the SHA-256 of the published file before it is
moved into place, so a truncated or tampered download never reaches the cache.

`XQG_RAY_DATA_BASE_URL` (or `base_url=`) replaces the public URLs with a mirror laid out like
shared/data: `<base>/xquad/xquad.en.json`, `<base>/xquad-r/en.json`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from xqg_ray.config import default_data_dir
from xqg_ray.datasets import xquad, xquad_r
from xqg_ray.datasets.squad import discover
from xqg_ray.errors import ConfigError, StorageError
from xqg_ray.storage import sha256_of

CACHE_ENV = "XQG_RAY_CACHE"
BASE_URL_ENV = "XQG_RAY_DATA_BASE_URL"
_TIMEOUT_S = 60


@dataclass(frozen=True)
class PublicDataset:
    folder: str  # name under shared/data, in the cache and on a mirror
    file_pattern: str  # regex with a `lang` group, as the loader discovers files
    public_url: str  # where the files are published
    sha256: dict[str, str]  # file name -> checksum of the published file


DATASETS = {
    "xquad": PublicDataset(
        folder="xquad",
        file_pattern=xquad.FILE_PATTERN,
        public_url="https://raw.githubusercontent.com/google-deepmind/xquad/master",
        sha256={
            "xquad.ar.json": "abdabd7afed5c635d99cca0f3f0d0c9d9ed0bc77451e963c2e4e0638c29e486d",
            "xquad.de.json": "990b5d746746ed65ed4702ea5f35f99ffa4e2f1c390c07d003642acd937916f9",
            "xquad.el.json": "821cf0f88e73fa258fd2f548b19b6ec39f7025059e16f6f9fc8cd797c9c3663e",
            "xquad.en.json": "e4c57d1c9143aaa1c5d265ba5987a65f4e69528d2a98f29d6e75019b10344f29",
            "xquad.es.json": "dcbae93ec3a9f4b9e78fd834a171d6f96c1a875e10e15b7530b7e4ef4971e37e",
            "xquad.hi.json": "df2cce3532b37e9beb8979704b5c9a4bf874358f105395a298b89427b43b9d24",
            "xquad.ru.json": "208d5b1aa154c52b1b5c5eda16281e455e8fd198cdb9af3f469f0d6037d973bf",
            "xquad.th.json": "5cdda11d0e1e075f7872abf4e6ae830388ce7f617964d542308e9ae4257e0f43",
            "xquad.tr.json": "92179a564774b7696100d144c1e10870d0a966b6fccbdd254a65b9d2ab1971cc",
            "xquad.vi.json": "f619a1eb11fb42d3ab0834259e488a65f585447ef6154437bfb7199d85161a04",
            "xquad.zh.json": "691d0b3359bc6b8faa8de931dfdfe21d50a65861ae348e32a0d1a0190b0c8835",
        },
    ),
    "xquad_r": PublicDataset(
        folder="xquad-r",
        file_pattern=xquad_r.FILE_PATTERN,
        public_url="https://raw.githubusercontent.com/google-research-datasets/lareqa/master/xquad-r",
        sha256={
            "ar.json": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
            "de.json": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
            "el.json": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
            "en.json": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
            "es.json": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
            "hi.json": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
            "ru.json": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
            "th.json": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
            "tr.json": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
            "vi.json": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
            "zh.json": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
        },
    ),
}


def _spec(name: str) -> PublicDataset:
    if name not in DATASETS:
        raise ConfigError(
            f"dataset {name!r} has no public download; downloadable: {sorted(DATASETS)}"
        )
    return DATASETS[name]


def ensure_dataset(
    name: str, data_dir: str | None, cache_dir: str | None = None, base_url: str | None = None
) -> str:
    """A folder (local path or URL) holding the files of dataset `name`."""
    spec = _spec(name)
    if data_dir:
        if not discover(data_dir, spec.file_pattern):
            raise StorageError(
                f"{data_dir}: holds none of the {name} files (e.g. {min(spec.sha256)})"
            )
        return data_dir
    return default_data_dir(spec.folder) or download_dataset(name, cache_dir, base_url)


def cache_root(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "xqg-ray")


def download_dataset(name: str, cache_dir: str | None = None, base_url: str | None = None) -> str:
    """Fill `<cache>/<folder>` with the verified files; files already there and intact are kept."""
    spec = _spec(name)
    target = cache_root(cache_dir) / spec.folder
    mirror = base_url or os.environ.get(BASE_URL_ENV)
    source = f"{mirror.rstrip('/')}/{spec.folder}" if mirror else spec.public_url
    target.mkdir(parents=True, exist_ok=True)
    for filename, digest in spec.sha256.items():
        path = target / filename
        if path.is_file() and sha256_of(str(path)) == digest:
            continue
        _download(f"{source}/{filename}", path, digest)
    return str(target)


def _download(url: str, path: Path, expected: str) -> None:
    """Stream `url` into a temporary sibling, verify its checksum, then rename into place."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            for block in iter(lambda: resp.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != expected:
            raise StorageError(
                f"{url}: downloaded file has SHA-256 {digest.hexdigest()}, expected {expected} "
                f"(corrupt or changed upstream); it was not kept"
            )
        os.replace(tmp, path)
    except StorageError:
        raise
    except (urllib.error.URLError, OSError) as exc:  # URLError covers HTTP errors too
        raise StorageError(
            f"{url}: download failed ({exc}); pass a data_dir that holds the files instead"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
