"""Find or download the benchmark data set: the EPFL CA1 hippocampus FIB-SEM stacks (Lucchi et al.).

Home page: https://www.epfl.ch/labs/cvlab/data/data-em/ ("Mitochondria Detection in EM Stacks"). Four
multipage TIFFs, each 165 x 768 x 1024 uint8 at 5 nm isotropic: ``training.tif``,
``training_groundtruth.tif``, ``testing.tif``, ``testing_groundtruth.tif``. The full 1065 x 2048 x 1536
volume ``volumedata.tif`` (3.3 GB, no labels) is the separate, optional data set ``lucchi-volume``.

Every download streams into a ``<file>.part`` file in the destination, is hashed while it streams, checked,
and only then renamed to its real name, so an interrupted or corrupted download never looks like data.

Checksums: neither EPFL nor any public tool we searched (torch-em, pytorch_connectomics, empanada and
other download scripts) publishes a SHA-256 or MD5 of these exact files; torch-em and pytorch_connectomics
download the re-packaged "Lucchi++" archive instead. So the registry holds ``None`` and ``fetch`` uses
trust-on-first-use: it prints the SHA-256 of what it got, records it in a ``SHA256SUMS`` file beside the
data (``sha256sum -c SHA256SUMS`` format), and every later fetch into that folder verifies against it.
Pinned registry hashes, when present, always win over ``SHA256SUMS``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from tqdm import tqdm

from mitoseg.errors import MitosegError

CHUNK = 1 << 20  # 1 MiB: bounded memory whatever the file size
TIMEOUT_S = 60  # per socket operation, not for the whole file
SUMS_FILE = "SHA256SUMS"
REPO_ROOT = Path(__file__).resolve().parents[2]  # src/mitoseg/download.py -> repository root
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"  # the folder beside the repository
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders

# The folder name on the EPFL server really starts with a space, hence the %20.
_EPFL = "https://documents.epfl.ch/groups/c/cv/cvlab-unit/www/data/%20ElectronMicroscopy_Hippocampus"


class Remote(NamedTuple):
    """Where one file is published, and its SHA-256 (hex) and size in bytes where known (else None)."""

    url: str
    sha256: str | None
    size: int | None


# URLs: the EPFL documents server, as linked from the data page and used by public download scripts
# (e.g. zhongzisha/EM_data download3.sh, which fetches all five files).
# Sizes: from a public BitTorrent client's unit test that parses the multi-file torrent
# "ElectronMicroscopy_Hippocampus" (Lib.Bittorrent.UnitTests, TorrentController_StartFromFile_Tests):
# 129919357 bytes for each of the four stacks, 3353674357 for volumedata.tif. Used for the progress bar
# and a warning only, never to reject a file.
# SHA-256: none found in any public material (see the module docstring), hence None and trust-on-first-use.
REGISTRY: dict[str, dict[str, Remote]] = {
    "lucchi": {
        "training.tif": Remote(f"{_EPFL}/training.tif", None, 129_919_357),
        "training_groundtruth.tif": Remote(f"{_EPFL}/training_groundtruth.tif", None, 129_919_357),
        "testing.tif": Remote(f"{_EPFL}/testing.tif", None, 129_919_357),
        "testing_groundtruth.tif": Remote(f"{_EPFL}/testing_groundtruth.tif", None, 129_919_357),
    },
    "lucchi-volume": {
        "volumedata.tif": Remote(f"{_EPFL}/volumedata.tif", None, 3_353_674_357),
    },
}


def cache_dir(name: str = "lucchi") -> Path:
    """The default download folder of a data set: ``$MITOSEG_CACHE/<name>``, else ~/.cache/mitoseg/<name>."""
    root = os.environ.get("MITOSEG_CACHE")
    if not root:
        try:
            root = Path.home() / ".cache" / "mitoseg"
        except RuntimeError:  # no $HOME and a user id without a passwd entry (a container's --user)
            raise MitosegError("no home folder to keep downloads in: set MITOSEG_CACHE to a folder, or give --dest") \
                from None
    return Path(root).expanduser() / name


def data_dir(name: str = "lucchi", data: str | os.PathLike | None = None) -> Path | None:
    """The first folder that holds every file of data set ``name``, or None when there is none.

    Looked at in order: the explicit ``data`` folder (or its ``<name>/`` subfolder) and, only when ``data``
    is not given, ``$MITOSEG_DATA/<name>`` and ``$MITOSEG_DATA``, ``../shared/data/<name>`` from the current
    directory, ``shared/data/<name>`` beside the repository, and the cache (see ``cache_dir``). An explicit
    folder is never silently replaced by another copy found elsewhere.
    """
    files = _files(name)
    for folder in _candidates(name, data):
        if all((folder / fname).is_file() for fname in files):
            return folder
    return None


def paths(name: str = "lucchi", data: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files of a locally available data set, keyed by file name (e.g. ``"training.tif"``).

    Raises MitosegError saying where it looked and how to get the data when no complete copy is found.
    """
    files = _files(name)
    folder = data_dir(name, data)
    if folder is None:
        looked = ", ".join(str(p) for p in _candidates(name, data))
        raise MitosegError(
            f"data set {name!r} not found (looked in: {looked}); "
            f"run `mitoseg data fetch {name}` or pass --data DIR"
        )
    return {fname: folder / fname for fname in files}


def fetch(
    name: str = "lucchi",
    dest: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """Download data set ``name`` into ``dest`` (default ``cache_dir(name)``) and return that folder.

    Files already present and matching their checksum are kept; ``overwrite`` downloads them again.
    ``base_url`` replaces the host and folder of every URL (a mirror, or ``file://`` in tests): the file
    is fetched from ``<base_url>/<file name>``. Each file is verified against the registry's SHA-256, else
    against ``SHA256SUMS`` in ``dest``; with neither, its hash is printed and recorded (trust-on-first-use).
    Network and checksum failures raise MitosegError and leave neither a final nor a ``.part`` file, nor
    the folders this call created for them when they stay empty.
    """
    files = _files(name)
    folder = Path(dest).expanduser() if dest is not None else cache_dir(name)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    elsewhere = " (give --dest FOLDER, or set MITOSEG_CACHE)" if dest is None else ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MitosegError(f"cannot create download folder {folder}: {err.strerror or err}{elsewhere}") from err
    try:
        for fname, remote in files.items():
            try:
                _fetch_one(folder, fname, remote, overwrite, progress, base_url)
            except PermissionError as err:  # a cache of another user's
                raise MitosegError(f"cannot write in {folder}: {err.strerror}{elsewhere}") from None
    except BaseException:
        for path in created:  # innermost first; a folder that holds anything stays
            if any(path.iterdir()):
                break
            path.rmdir()
        raise
    return folder


def sha256sum(path: str | os.PathLike) -> str:
    """The SHA-256 (lowercase hex) of a file, read in 1 MiB chunks so any size fits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(name: str) -> dict[str, Remote]:
    """The registry entry of a data set, or a MitosegError listing the known names."""
    if name not in REGISTRY:
        raise MitosegError(f"unknown data set {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _candidates(name: str, data: str | os.PathLike | None) -> list[Path]:
    """The folders ``data_dir`` checks, in order, without duplicates."""
    if data is not None:
        explicit = Path(data).expanduser()
        found = [explicit, explicit / name]
    else:
        env = os.environ.get("MITOSEG_DATA")
        if env and not Path(env).expanduser().is_dir():  # a typo in a job's environment: not other data in silence
            raise MitosegError(f"$MITOSEG_DATA is {env}: no such folder (set it to the data's folder, or unset it)")
        found = [Path(env).expanduser() / name, Path(env).expanduser()] if env else []
        found += [Path.cwd().parent / "shared" / "data" / name, SHARED_DATA / name, cache_dir(name)]
    return list(dict.fromkeys(p.resolve() for p in found))


def _fetch_one(
    folder: Path, fname: str, remote: Remote, overwrite: bool, progress: bool, base_url: str | None
) -> None:
    """Make ``folder/fname`` a verified copy of ``remote``, downloading only when needed."""
    target = folder / fname
    expected = (remote.sha256 or _read_sums(folder).get(fname) or "").lower() or None
    source = "pinned in the registry" if remote.sha256 else f"recorded in {folder / SUMS_FILE}"
    if target.is_file() and not overwrite:
        got = sha256sum(target)
        if expected is None:
            _record_sum(folder, fname, got)
            _say(f"{fname}: already present, no checksum known; recorded SHA-256 {got} in {SUMS_FILE}")
            return
        if got == expected:
            _say(f"{fname}: already present and verified")
            return
        _say(f"{fname}: present but its SHA-256 {got} is not the expected {expected}; downloading again")
    part = folder / f"{fname}.part"
    got = _download(_url(remote, fname, base_url), part, remote.size, progress, fname)
    _check(part, fname, (expected, source), got, remote.size)
    os.replace(part, target)
    _record_sum(folder, fname, got)
    if expected is None:
        _say(
            f"{fname}: no published checksum; trusting this first download, SHA-256 {got} "
            f"recorded in {folder / SUMS_FILE}"
        )


def _url(remote: Remote, fname: str, base_url: str | None) -> str:
    """The registry URL, or ``<base_url>/<fname>`` for a mirror."""
    return f"{base_url.rstrip('/')}/{fname}" if base_url else remote.url


def _download(url: str, part: Path, size: int | None, progress: bool, label: str) -> str:
    """Stream ``url`` into ``part`` and return its SHA-256; any failure deletes ``part`` and raises."""
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mitoseg (python urllib)"})
    except ValueError as e:  # no scheme, an unknown one
        raise MitosegError(f"cannot download {url}: {e}") from None
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else size
            with tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if length and length.isdigit() and out.tell() != int(length):
                raise MitosegError(f"download of {url} was cut short: got {out.tell()} of {length} bytes")
    except BaseException as err:
        part.unlink(missing_ok=True)
        if isinstance(err, (OSError, http.client.HTTPException)):
            raise MitosegError(f"download of {url} failed: {_reason(err)}") from err
        raise
    return digest.hexdigest()


def _reason(err: BaseException) -> str:
    """A short one-line reason for a network error (HTTP status, refused connection, timeout...)."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        err = err.reason
    elif isinstance(err, urllib.error.URLError):
        return str(err.reason)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _check(part: Path, fname: str, expected: tuple[str | None, str], got: str, size: int | None) -> None:
    """Reject a downloaded ``part`` whose hash differs or that is not a TIFF; warn on an unexpected size.

    ``expected`` is (hash or None, where that hash comes from), so the message can say what to fix.
    """
    want, source = expected
    if want is not None and got != want:
        part.unlink(missing_ok=True)
        raise MitosegError(
            f"{fname}: SHA-256 mismatch, expected {want} ({source}), got {got}; download deleted"
        )
    if fname.endswith((".tif", ".tiff")) and not _is_tiff(part):
        part.unlink(missing_ok=True)
        raise MitosegError(f"{fname}: the server did not send a TIFF file (an error page?); download deleted")
    if size is not None and part.stat().st_size != size:
        _say(f"{fname}: warning: got {part.stat().st_size} bytes, the published size is {size}")


def _is_tiff(path: Path) -> bool:
    """Whether a file starts with a TIFF or BigTIFF header: catches HTML error pages served as 200 OK."""
    with open(path, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _read_sums(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 from ``folder/SHA256SUMS`` (``sha256sum`` format); empty when absent."""
    path = folder / SUMS_FILE
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        fields = line.split(maxsplit=1)
        if len(fields) == 2:
            sums[fields[1].lstrip("*")] = fields[0].lower()
    return sums


def _record_sum(folder: Path, fname: str, digest: str) -> None:
    """Add or update one entry of ``folder/SHA256SUMS``, written atomically."""
    sums = _read_sums(folder)
    if sums.get(fname) == digest:
        return
    sums[fname] = digest
    tmp = folder / f"{SUMS_FILE}.tmp"
    tmp.write_text("".join(f"{h}  {f}\n" for f, h in sorted(sums.items())))
    os.replace(tmp, folder / SUMS_FILE)


def _say(message: str) -> None:
    """One status line on stderr, beside the progress bars, so stdout stays clean for the CLI."""
    print(message, file=sys.stderr)
