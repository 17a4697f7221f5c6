"""The verified downloader, against a real HTTP server on 127.0.0.1."""

import contextlib
import filecmp
import functools
import hashlib
import http.server
import os
import shutil
import socket
import threading
import types
import warnings

import numpy as np
import pytest

from metajax.data import download
from metajax.data.students import knowledge_tracing as kt
from metajax.data.vision import omniglot_official

FILES = download.OMNIGLOT_FILES
KT_FILES = download.KNOWLEDGE_TRACING_FILES
KNOWN = tuple(n for n, f in FILES.items() if f.sha256)
SMALL1 = "images_background_small1.zip"


class Handler(http.server.SimpleHTTPRequestHandler):
  """Serves a folder and logs request paths.

  `/truncated` announces 1000 bytes and sends 10, like a dropped connection.
  """

  def __init__(self, *args, log, **kwargs):
    self.log = log  # before super().__init__, which handles the request
    super().__init__(*args, **kwargs)

  def do_GET(self):
    self.log.append(self.path)
    if self.path != "/truncated":
      super().do_GET()
      return
    self.send_response(200)
    self.send_header("Content-Length", "1000")
    self.end_headers()
    self.wfile.write(b"x" * 10)

  def log_message(self, *args):
    pass  # keeps test output clean


@contextlib.contextmanager
def serve(root, monkeypatch):
  """An HTTP server on 127.0.0.1 for the folder `root`, while in the block."""
  for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
    monkeypatch.delenv(proxy, raising=False)
  log = []
  httpd = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0),
      functools.partial(Handler, directory=str(root), log=log))
  # A short poll interval keeps shutdown() quick.
  thread = threading.Thread(target=httpd.serve_forever, args=(0.05,),
                            daemon=True)
  thread.start()
  try:
    yield types.SimpleNamespace(
        root=root, log=log, url=f"http://127.0.0.1:{httpd.server_port}")
  finally:
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def server(tmp_path, shared_data_dir, monkeypatch):
  """Serves a copy of the shared Omniglot files, under their registry names."""
  root = tmp_path / "mirror"
  for name in KNOWN:
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(shared_data_dir, "omniglot", name), target)
  with serve(root, monkeypatch) as running:
    yield running


@pytest.fixture
def kt_server(tmp_path, shared_data_dir, monkeypatch):
  """Serves a copy of the shared knowledge-tracing files, laid out like the
  DKVMN release's `data/` folder."""
  root = tmp_path / "kt_mirror"
  shutil.copytree(os.path.join(shared_data_dir, "knowledge_tracing"), root)
  with serve(root, monkeypatch) as running:
    yield running


def files_under(folder):
  return sorted(os.path.relpath(os.path.join(root, f), folder)
                for root, _, files in os.walk(folder) for f in files)


def test_registry_matches_the_shared_checksums(shared_data_dir):
  sums = {}
  with open(os.path.join(shared_data_dir, "SHA256SUMS")) as f:
    for line in f:
      digest, path = line.split()
      sums[path] = digest
  for name, remote in FILES.items():
    assert sums.get(f"./omniglot/{name}") == remote.sha256, name
  assert sorted(set(FILES) - set(KNOWN)) == ["images_background.zip",
                                             "images_evaluation.zip"]
  assert FILES[SMALL1].url == ("https://github.com/brendenlake/omniglot/raw/"
                               "master/python/images_background_small1.zip")
  assert FILES["vinyals_splits/val.txt"].url == (
      "https://raw.githubusercontent.com/jakesnell/prototypical-networks/"
      "master/data/omniglot/splits/vinyals/val.txt")


def test_downloads_verify_and_then_come_from_the_cache(server, tmp_path,
                                                       shared_data_dir):
  cache = str(tmp_path / "cache")
  paths = download.download_omniglot(cache, base_url=server.url, files=KNOWN,
                                     progress=False)
  assert sorted(paths) == sorted(KNOWN)
  assert sorted(server.log) == sorted(f"/{n}" for n in KNOWN)
  for name, path in paths.items():
    assert path == os.path.join(cache, *name.split("/"))
    assert download.sha256_file(path) == FILES[name].sha256
    assert filecmp.cmp(path, os.path.join(shared_data_dir, "omniglot", name),
                       shallow=False)
  assert files_under(cache) == sorted(KNOWN)  # no partial or record files
  assert download.download_omniglot(cache, base_url=server.url, files=KNOWN,
                                    progress=False) == paths
  assert len(server.log) == len(KNOWN)
  # A cached file that changed is reported, not used or replaced.
  with open(paths[SMALL1], "ab") as f:
    f.write(b"\0")
  changed = download.sha256_file(paths[SMALL1])
  with pytest.raises(download.ChecksumError) as error:
    download.download_omniglot(cache, base_url=server.url, files=[SMALL1])
  for part in (paths[SMALL1], FILES[SMALL1].sha256, changed):
    assert part in str(error.value)
  assert len(server.log) == len(KNOWN)


def test_downloaded_zip_reads_like_the_shared_copy(server, tmp_path,
                                                   shared_data_dir):
  paths = download.download_omniglot(str(tmp_path / "cache"),
                                     base_url=server.url, files=[SMALL1])
  got = omniglot_official.load_official(paths[SMALL1])
  want = omniglot_official.load_official(
      os.path.join(shared_data_dir, "omniglot", SMALL1))
  assert got.names == want.names and len(got.names) == 136
  np.testing.assert_array_equal(got.images, want.images)


def test_tampered_download_is_discarded(server, tmp_path):
  served = server.root / SMALL1
  data = bytearray(served.read_bytes())
  data[1000] ^= 0xFF
  served.write_bytes(bytes(data))
  cache = tmp_path / "cache"
  with pytest.raises(download.ChecksumError) as error:
    download.download_omniglot(str(cache), base_url=server.url,
                               files=[SMALL1], progress=False)
  message = str(error.value)
  assert f"{server.url}/{SMALL1}" in message
  assert FILES[SMALL1].sha256 in message
  assert hashlib.sha256(data).hexdigest() in message
  assert files_under(cache) == []


def test_http_failures_name_the_url(server, tmp_path):
  cache = tmp_path / "cache"
  with pytest.raises(download.DownloadError, match="HTTP 404") as error:
    download.download_omniglot(str(cache), base_url=f"{server.url}/nowhere",
                               files=["vinyals_splits/val.txt"])
  assert f"{server.url}/nowhere/vinyals_splits/val.txt" in str(error.value)
  url = f"{server.url}/truncated"
  with pytest.raises(download.DownloadError, match="10 of 1000") as error:
    download.fetch(url, str(cache / "t.bin"), "0" * 64)
  assert url in str(error.value)
  assert files_under(cache) == []
  # A port that was free a moment ago: nothing listens there.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}/x.txt"
  with pytest.raises(download.DownloadError, match="could not reach") as error:
    download.fetch(url, str(cache / "x.txt"), "0" * 64, timeout=5)
  assert url in str(error.value)


def test_unknown_hash_needs_a_pin_or_trust(server, tmp_path):
  # The full zip's real hash is unknown here; small1's bytes stand in for it.
  name = "images_background.zip"
  shutil.copy(server.root / SMALL1, server.root / name)
  digest = FILES[SMALL1].sha256
  kwargs = dict(base_url=server.url, progress=False,
                files=[name, "vinyals_splits/val.txt"])
  cache = str(tmp_path / "cache")
  with pytest.raises(ValueError, match="trust_on_first_use") as error:
    download.download_omniglot(cache, **kwargs)
  assert name in str(error.value)
  assert server.log == [] and not os.path.exists(cache)
  # Default files include the full zips, so the default call asks too.
  with pytest.raises(ValueError, match="images_evaluation.zip"):
    download.download_omniglot(cache, base_url=server.url)
  pinned = download.download_omniglot(str(tmp_path / "pinned"),
                                      sha256={name: digest}, **kwargs)
  assert download.sha256_file(pinned[name]) == digest
  assert not os.path.exists(pinned[name] + download.RECORD_SUFFIX)

  with pytest.warns(UserWarning, match=digest):
    paths = download.download_omniglot(cache, trust_on_first_use=True,
                                       **kwargs)
  assert download.recorded_sha256(paths[name]) == digest
  requests = len(server.log)
  # From now on the record pins the file: no flag, no warning, no request.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert download.download_omniglot(cache, **kwargs) == paths
  assert len(server.log) == requests
  with open(paths[name], "ab") as f:
    f.write(b"\0")
  with pytest.raises(download.ChecksumError, match=digest):
    download.download_omniglot(cache, **kwargs)


def test_fetch_into_a_folder_and_argument_errors(server, tmp_path):
  folder = tmp_path / "downloads"
  folder.mkdir()
  name = "vinyals_splits/test.txt"
  path = download.fetch(f"{server.url}/{name}", str(folder), FILES[name].sha256)
  assert path == str(folder / "test.txt")
  assert download.sha256_file(path) == FILES[name].sha256
  with pytest.raises(ValueError, match="not a SHA-256"):
    download.fetch(f"{server.url}/{name}", str(folder / "x.txt"), "abc")
  with pytest.raises(ValueError, match="unknown Omniglot file"):
    download.download_omniglot(str(folder), files=["images_background.tar"])
  with pytest.raises(ValueError, match="names no file"):
    download.fetch(f"{server.url}/", str(folder))


# Knowledge tracing: the DKVMN release.


def kt_split_files(name):
  return sorted(f"{name}_{split}.csv"
                for split in download.KNOWLEDGE_TRACING_SPLITS)


def test_kt_registry_matches_the_shared_checksums(shared_data_dir):
  with open(os.path.join(shared_data_dir, "SHA256SUMS")) as f:
    sums = {path: digest for digest, path in map(str.split, f)}
  want = {path[len("./knowledge_tracing/"):]: digest
          for path, digest in sums.items()
          if path.startswith("./knowledge_tracing/")}
  assert {n: f.sha256 for n, f in KT_FILES.items()} == want
  for name in download.KNOWLEDGE_TRACING_DATASETS:
    for file in kt_split_files(name):
      assert f"{name}/{file}" in KT_FILES
  assert KT_FILES["STATICS/STATICS_test.csv"].url == (
      "https://raw.githubusercontent.com/jennyzhang0215/DKVMN/"
      "b2dac2ad06c03d3715938e890e69856a3cbc7e1f/data/STATICS/"
      "STATICS_test.csv")


def test_kt_download_then_load_like_the_shared_copy(kt_server, tmp_path,
                                                    shared_data_dir):
  data_dir = str(tmp_path / "data")
  folder = download.download_knowledge_tracing(
      "assist2009_updated", data_dir, base_url=kt_server.url)
  assert folder == os.path.join(data_dir, "knowledge_tracing",
                                "assist2009_updated")
  assert sorted(os.listdir(folder)) == kt_split_files("assist2009_updated")
  shared = os.path.join(shared_data_dir, "knowledge_tracing",
                        "assist2009_updated")
  for file in os.listdir(folder):
    assert filecmp.cmp(os.path.join(folder, file), os.path.join(shared, file),
                       shallow=False), file
  got = kt.load(data_dir, "assist2009", fold=2)
  assert kt.summary(got) == kt.summary(
      kt.load(shared_data_dir, "assist2009", fold=2))
  assert got.train.source == os.path.join(folder,
                                          "assist2009_updated_train2.csv")
  # Present and verified: no request, also through load(download=True).
  requests = len(kt_server.log)
  download.download_knowledge_tracing("assist2009_updated", data_dir,
                                      base_url=kt_server.url)
  kt.load(data_dir, "assist2009", download=True)
  assert len(kt_server.log) == requests


def test_kt_load_downloads_when_asked(kt_server, tmp_path, monkeypatch):
  # The registry's URLs, redirected to the local mirror: the same code path
  # as a real download, without the internet.
  monkeypatch.setattr(download, "KNOWLEDGE_TRACING_FILES", {
      n: f._replace(url=f"{kt_server.url}/{n}") for n, f in KT_FILES.items()})
  data_dir = tmp_path / "data"
  with pytest.raises(FileNotFoundError) as error:
    kt.load(str(data_dir), "statics2011")
  assert kt_server.log == []
  data = kt.load(str(data_dir), "statics2011", fold=1, download=True)
  assert data.name == "STATICS" and data.num_questions == 1223
  assert data.train.num_students + data.valid.num_students == 229
  folder = data_dir / "knowledge_tracing" / "STATICS"
  assert sorted(os.listdir(folder)) == kt_split_files("STATICS")
  for hint in (str(folder), "download=True", "$METAJAX_DATA_DIR"):
    assert hint in str(error.value)
  with pytest.raises(ValueError, match="downloadable ones are"):
    kt.load(str(data_dir), "assist2015", download=True)


def test_kt_side_files(kt_server, tmp_path):
  folder = download.download_knowledge_tracing(
      "STATICS", str(tmp_path), base_url=kt_server.url, side_files=True)
  side = sorted(n.split("/")[1] for n in KT_FILES
                if n.startswith("STATICS/")
                and n.split("/")[1] not in kt_split_files("STATICS"))
  assert "Qmatrix.csv" in side and "data_log" in side
  assert sorted(os.listdir(folder)) == sorted(kt_split_files("STATICS") + side)


def test_kt_tampered_download_is_discarded(kt_server, tmp_path):
  served = kt_server.root / "STATICS" / "STATICS_valid3.csv"
  data = bytearray(served.read_bytes())
  data[100] ^= 0x01
  served.write_bytes(bytes(data))
  data_dir = tmp_path / "data"
  with pytest.raises(download.ChecksumError) as error:
    download.download_knowledge_tracing("STATICS", str(data_dir),
                                        base_url=kt_server.url)
  message = str(error.value)
  final = data_dir / "knowledge_tracing" / "STATICS" / "STATICS_valid3.csv"
  assert f"{kt_server.url}/STATICS/STATICS_valid3.csv" in message
  assert str(final) in message
  assert KT_FILES["STATICS/STATICS_valid3.csv"].sha256 in message
  assert hashlib.sha256(data).hexdigest() in message
  # The files before it stay, verified; nothing of it, not even a temporary.
  assert files_under(final.parent) == sorted(
      f"STATICS_{split}.csv" for split in ("train", "test", "train1",
                                           "valid1", "train2", "valid2",
                                           "train3"))


def test_kt_http_failures_and_unknown_names(kt_server, tmp_path):
  data_dir = tmp_path / "data"
  with pytest.raises(download.DownloadError, match="HTTP 404") as error:
    download.download_knowledge_tracing(
        "STATICS", str(data_dir), base_url=f"{kt_server.url}/nowhere")
  assert (f"{kt_server.url}/nowhere/STATICS/STATICS_train.csv"
          in str(error.value))
  assert files_under(data_dir) == []
  with pytest.raises(ValueError, match="unknown knowledge-tracing dataset "
                     "'assist2009'"):
    download.download_knowledge_tracing("assist2009", str(data_dir))
