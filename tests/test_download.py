"""Tests of mitoseg.download, offline: tiny fake TIFFs served from file:// and from a local HTTP server."""

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile

from mitoseg import download
from mitoseg.download import REGISTRY, Remote, data_dir, fetch, paths
from mitoseg.errors import MitosegError

SHARED_AT_IMPORT = download.SHARED_DATA  # before the autouse fixture replaces it
NAMES = ["training.tif", "training_groundtruth.tif", "testing.tif", "testing_groundtruth.tif"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, MITOSEG_DATA or a real shared/data folder."""
    monkeypatch.setenv("MITOSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MITOSEG_DATA", raising=False)
    monkeypatch.setattr(download, "SHARED_DATA", tmp_path / "repo-shared" / "data")
    work = tmp_path / "work" / "main"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)


@pytest.fixture
def source(tmp_path) -> Path:
    """A folder with four tiny, distinct TIFF stacks named like the real files."""
    src = tmp_path / "mirror"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name in NAMES:
        stack = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
        tifffile.imwrite(src / name, stack, photometric="minisblack")
    return src


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def register(monkeypatch, src: Path, pinned: bool = True, wrong: str | None = None) -> None:
    """Point the 'lucchi' registry at ``src`` with real (or no, or one wrong) checksums."""
    entry = {}
    for name in NAMES:
        digest = sha(src / name) if pinned else None
        if name == wrong:
            digest = "0" * 64
        entry[name] = Remote(f"https://example.invalid/{name}", digest, (src / name).stat().st_size)
    monkeypatch.setitem(REGISTRY, "lucchi", entry)


@pytest.fixture
def server(source):
    """A threaded HTTP server on 127.0.0.1 serving ``source``; yields its base URL and shuts down after."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(source))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def assert_same(src: Path, dest: Path) -> None:
    for name in NAMES:
        assert (dest / name).read_bytes() == (src / name).read_bytes()
    assert not list(dest.glob("*.part"))


def test_fetch_file_url_then_skips(tmp_path, monkeypatch, source):
    register(monkeypatch, source)
    dest = fetch(dest=tmp_path / "out", progress=False, base_url=source.as_uri())
    assert dest == tmp_path / "out"
    assert_same(source, dest)
    stamps = {name: (dest / name).stat().st_mtime_ns for name in NAMES}
    # A second fetch must not need the source at all: everything is present and verified.
    fetch(dest=dest, progress=False, base_url=(tmp_path / "gone").as_uri())
    assert {name: (dest / name).stat().st_mtime_ns for name in NAMES} == stamps


def test_fetch_http_server_with_progress(tmp_path, monkeypatch, source, server, capsys):
    register(monkeypatch, source)
    dest = fetch(dest=tmp_path / "out", progress=True, base_url=server + "/")
    assert_same(source, dest)
    assert "training.tif" in capsys.readouterr().err


def test_fetch_defaults_to_cache(tmp_path, monkeypatch, source):
    register(monkeypatch, source)
    dest = fetch(progress=False, base_url=source.as_uri())
    assert dest == tmp_path / "cache" / "lucchi"
    assert paths() == {name: dest / name for name in NAMES}


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch, source, server):
    register(monkeypatch, source, wrong="testing.tif")
    dest = tmp_path / "out"
    with pytest.raises(MitosegError) as info:
        fetch(dest=dest, progress=False, base_url=server)
    message = str(info.value)
    assert "testing.tif" in message and "0" * 64 in message and sha(source / "testing.tif") in message
    assert "\n" not in message
    assert not (dest / "testing.tif").exists()
    assert not list(dest.glob("*.part"))


def test_http_404(tmp_path, monkeypatch, source, server):
    register(monkeypatch, source)
    (source / "testing.tif").unlink()
    dest = tmp_path / "out"
    with pytest.raises(MitosegError, match="404"):
        fetch(dest=dest, progress=False, base_url=server)
    assert not (dest / "testing.tif").exists()
    assert not list(dest.glob("*.part"))


def test_missing_file_url(tmp_path, monkeypatch, source):
    """Nothing fetched: the folders the call created are removed again; a folder that was there stays."""
    register(monkeypatch, source)
    with pytest.raises(MitosegError, match="download of .* failed"):
        fetch(dest=tmp_path / "new" / "out", progress=False, base_url=(tmp_path / "nowhere").as_uri())
    assert not (tmp_path / "new").exists()
    (tmp_path / "out").mkdir()
    with pytest.raises(MitosegError, match="download of .* failed"):
        fetch(dest=tmp_path / "out", progress=False, base_url=(tmp_path / "nowhere").as_uri())
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


def test_connection_refused(tmp_path, monkeypatch, source):
    register(monkeypatch, source)
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MitosegError, match="failed"):
        fetch(dest=tmp_path / "out", progress=False, base_url=f"http://127.0.0.1:{port}")


def test_truncated_response(tmp_path, monkeypatch, source):
    """A server that promises more bytes than it sends: a MitosegError, not a short file."""
    register(monkeypatch, source, pinned=False)

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"II*\x00" + b"x" * 100)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(MitosegError, match="failed|cut short"):
            fetch(
                dest=tmp_path / "out", progress=False, base_url=f"http://127.0.0.1:{httpd.server_address[1]}"
            )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    assert not list((tmp_path / "out").glob("*"))


def test_trust_on_first_use(tmp_path, monkeypatch, source, capsys):
    register(monkeypatch, source, pinned=False)
    dest = fetch(dest=tmp_path / "out", progress=False, base_url=source.as_uri())
    assert_same(source, dest)
    sums = (dest / "SHA256SUMS").read_text()
    for name in NAMES:
        assert f"{sha(source / name)}  {name}" in sums
    assert sha(source / "training.tif") in capsys.readouterr().err

    # A corrupted local copy is noticed and downloaded again.
    (dest / "training.tif").write_bytes(b"II*\x00corrupt")
    fetch(dest=dest, progress=False, base_url=source.as_uri())
    assert_same(source, dest)

    # A changed upstream file is refused: it does not match what was recorded.
    good = (dest / "testing.tif").read_bytes()
    tifffile.imwrite(source / "testing.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    with pytest.raises(MitosegError, match="testing.tif.*SHA256SUMS"):
        fetch(dest=dest, overwrite=True, progress=False, base_url=source.as_uri())
    assert not list(dest.glob("*.part"))
    assert (dest / "testing.tif").read_bytes() == good  # the verified copy survives a failed overwrite


def test_not_a_tiff_is_refused(tmp_path, monkeypatch, source):
    (source / "training.tif").write_text("<html>moved</html>")
    register(monkeypatch, source, pinned=False)
    with pytest.raises(MitosegError, match="not send a TIFF"):
        fetch(dest=tmp_path / "out", progress=False, base_url=source.as_uri())
    assert not (tmp_path / "out" / "training.tif").exists()
    assert not list((tmp_path / "out").glob("*.part"))


def test_existing_files_without_checksum_are_kept_and_recorded(tmp_path, monkeypatch, source):
    register(monkeypatch, source, pinned=False)
    fetch(dest=source, progress=False, base_url=(tmp_path / "gone").as_uri())
    sums = (source / "SHA256SUMS").read_text()
    assert all(f"{sha(source / name)}  {name}" in sums for name in NAMES)


def make_set(folder: Path, names=NAMES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"II*\x00")
    return folder


def test_data_dir_order(tmp_path, monkeypatch):
    cache = make_set(tmp_path / "cache" / "lucchi")
    assert data_dir() == cache
    repo_shared = make_set(tmp_path / "repo-shared" / "data" / "lucchi")
    assert data_dir() == repo_shared
    cwd_shared = make_set(tmp_path / "work" / "shared" / "data" / "lucchi")  # ../shared from cwd
    assert data_dir() == cwd_shared
    env_flat = make_set(tmp_path / "env")
    monkeypatch.setenv("MITOSEG_DATA", str(env_flat))
    assert data_dir() == env_flat
    env_named = make_set(env_flat / "lucchi")
    assert data_dir() == env_named
    explicit = make_set(tmp_path / "explicit")
    assert data_dir(data=explicit) == explicit
    assert data_dir(data=str(tmp_path / "explicit")) == explicit
    nested = make_set(tmp_path / "parent" / "lucchi")
    assert data_dir(data=tmp_path / "parent") == nested


def test_data_dir_skips_incomplete_and_explicit_is_not_overridden(tmp_path, monkeypatch):
    cache = make_set(tmp_path / "cache" / "lucchi")
    make_set(tmp_path / "env", NAMES[:3])
    monkeypatch.setenv("MITOSEG_DATA", str(tmp_path / "env"))
    assert data_dir() == cache
    assert data_dir(data=tmp_path / "env") is None
    assert data_dir("lucchi-volume") is None


def test_paths_not_found_is_helpful(tmp_path):
    with pytest.raises(MitosegError) as info:
        paths()
    message = str(info.value)
    assert "mitoseg data fetch lucchi" in message and "--data DIR" in message
    assert str(tmp_path / "cache" / "lucchi") in message and "\n" not in message
    with pytest.raises(MitosegError, match="explicit"):
        paths(data=tmp_path / "explicit")


def test_unknown_data_set():
    with pytest.raises(MitosegError, match="unknown data set 'nope'.*lucchi"):
        fetch("nope")


def test_registry_is_well_formed():
    assert list(REGISTRY["lucchi"]) == NAMES
    assert list(REGISTRY["lucchi-volume"]) == ["volumedata.tif"]
    for files in REGISTRY.values():
        for name, remote in files.items():
            assert remote.url.startswith("https://documents.epfl.ch/") and remote.url.endswith("/" + name)
            assert remote.sha256 is None or (len(remote.sha256) == 64 and int(remote.sha256, 16) >= 0)


def test_shared_data_is_beside_the_repository():
    """The repository is tests/..; the shared data folder is its sibling (/work/main -> /work/shared/data)."""
    repo = Path(__file__).resolve().parents[1]
    assert download.REPO_ROOT == repo
    assert SHARED_AT_IMPORT == repo.parent / "shared" / "data"


def test_where_names_the_copy_compare_uses(tmp_path, monkeypatch, source, capsys):
    """`mitoseg data where lucchi` without the EPFL files: the derived copy `compare` uses, with its provenance
    (before: "not found (run: mitoseg data fetch lucchi)", though compare runs on it, and no fetch works offline);
    with neither, how to fetch."""
    import shutil

    from mitoseg.cli import main

    monkeypatch.delenv("MITOSEG_SHARED_DATA", raising=False)
    assert main(["data", "where", "lucchi"]) == 0
    assert capsys.readouterr().out == "lucchi: not found (run: mitoseg data fetch lucchi)\n"
    derived = tmp_path / "shared" / "data" / "lucchi-derived"
    shutil.copytree(source, derived)
    monkeypatch.setenv("MITOSEG_SHARED_DATA", str(derived.parent))
    assert main(["data", "where", "lucchi"]) == 0
    assert capsys.readouterr().out.startswith(f"lucchi: the EPFL files are not found; `compare` uses {derived} (EPFL "
                                              "CA1 hippocampus FIB-SEM (Lucchi et al.), derived public copy")


def test_a_data_variable_naming_no_folder_or_no_home_is_one_line(tmp_path, monkeypatch):
    """$MITOSEG_DATA or $MITOSEG_SHARED_DATA naming a missing folder is refused as --data is (before: ignored, and
    compare ran on other data); no home folder for the cache (no $HOME, a user id without a passwd entry) is one
    line saying what to set (before: pathlib's RuntimeError)."""
    from mitoseg import datasets

    monkeypatch.setenv("MITOSEG_DATA", str(tmp_path / "typo"))
    with pytest.raises(MitosegError, match=r"\$MITOSEG_DATA is .*typo: no such folder"):
        download.data_dir("lucchi")
    monkeypatch.delenv("MITOSEG_DATA")
    monkeypatch.setenv("MITOSEG_SHARED_DATA", str(tmp_path / "typo"))
    with pytest.raises(MitosegError, match=r"\$MITOSEG_SHARED_DATA is .*typo: no such folder"):
        datasets.lucchi_dir()
    monkeypatch.delenv("MITOSEG_CACHE")

    def homeless():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(download.Path, "home", staticmethod(homeless))
    with pytest.raises(MitosegError, match="no home folder to keep downloads in: set MITOSEG_CACHE"):
        download.cache_dir()


def test_a_cache_that_cannot_be_written_says_where_else(tmp_path, monkeypatch, source):
    """A download cache of another user's (Permission denied) says to give --dest or set MITOSEG_CACHE (before: the
    system's words alone); nothing is left of the folders it made."""
    register(monkeypatch, source)

    def denied(folder, *args):
        raise PermissionError(13, "Permission denied", str(folder / "training.tif"))

    monkeypatch.setattr(download, "_fetch_one", denied)
    with pytest.raises(MitosegError, match=r"cannot write in .*cache.*lucchi: Permission denied \(give --dest FOLDER, "
                                           r"or set MITOSEG_CACHE\)"):
        fetch(progress=False, base_url=source.as_uri())
    assert not (tmp_path / "cache").exists()
