"""Downloads into a cache folder, verified by SHA-256.

`fetch` streams one URL to a temporary file next to its destination, checks
its SHA-256 and only then renames it into place, so that the cache never
holds a partial or unverified file. A file already in the cache is verified
again instead of downloaded. `download_omniglot` fetches the official
Omniglot zips and the Vinyals split files through the `OMNIGLOT_FILES`
registry; its cache mirrors the layout of the project's shared data folder,
so its output reads with `omniglot_official.load_official` and
`omniglot.make_splits(split_dir=<cache>/vinyals_splits)`.
`download_knowledge_tracing` fetches ASSISTments 2009 ("assist2009_updated")
or Statics2011 ("STATICS") with the DKVMN train/test and five train/valid
splits into `<data_dir>/knowledge_tracing/<name>/`, where
`knowledge_tracing.load` reads them.

Only the standard library speaks HTTP here (`urllib`, which honours the
usual `*_proxy` environment variables).
"""

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Dict, Mapping, NamedTuple, Optional, Sequence

import tqdm

from metajax import io as io_lib
from metajax.data import paths as paths_lib

LAKE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
VINYALS_URL = ("https://raw.githubusercontent.com/jakesnell/"
               "prototypical-networks/master/data/omniglot/splits/vinyals")
# Pinned to the commit that added the data (unchanged since), so that the
# files, and so their hashes, cannot change under a URL.
DKVMN_URL = ("https://raw.githubusercontent.com/jennyzhang0215/DKVMN/"
             "b2dac2ad06c03d3715938e890e69856a3cbc7e1f/data")
RECORD_SUFFIX = ".sha256"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ChecksumError(ValueError):
  """A downloaded or cached file does not have the expected SHA-256."""


class DownloadError(OSError):
  """A URL could not be downloaded (HTTP error, unreachable host, ...)."""


class RemoteFile(NamedTuple):
  """One entry of a download registry.

  Attributes:
    url: where the file is published.
    sha256: its SHA-256 as 64 lowercase hex digits, or None where no trusted
      value is known (see `download_omniglot`).
  """
  url: str
  sha256: Optional[str]


# Keys are paths in the cache (and below a mirror's base URL). The known
# hashes are those of the byte-identical copies in the project's shared data
# folder (its SHA256SUMS); the full zips are not among them.
OMNIGLOT_FILES = {
    "images_background.zip": RemoteFile(
        f"{LAKE_URL}/images_background.zip", None),
    "images_evaluation.zip": RemoteFile(
        f"{LAKE_URL}/images_evaluation.zip", None),
    "images_background_small1.zip": RemoteFile(
        f"{LAKE_URL}/images_background_small1.zip",
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4"),
    "images_background_small2.zip": RemoteFile(
        f"{LAKE_URL}/images_background_small2.zip",
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f"),
    "vinyals_splits/train.txt": RemoteFile(
        f"{VINYALS_URL}/train.txt",
        "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0"),
    "vinyals_splits/val.txt": RemoteFile(
        f"{VINYALS_URL}/val.txt",
        "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a"),
    "vinyals_splits/test.txt": RemoteFile(
        f"{VINYALS_URL}/test.txt",
        "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204"),
    "vinyals_splits/trainval.txt": RemoteFile(
        f"{VINYALS_URL}/trainval.txt",
        "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a"),
}
# Everything the standard protocols need: both full sets and the splits.
OMNIGLOT_DEFAULT = ("images_background.zip", "images_evaluation.zip",
                    "vinyals_splits/train.txt", "vinyals_splits/val.txt",
                    "vinyals_splits/test.txt", "vinyals_splits/trainval.txt")

# SHA-256 of each file of the DKVMN release, by its path below DKVMN_URL: the
# byte-identical copies in the project's shared data folder (its SHA256SUMS).
_KNOWLEDGE_TRACING_SHA256 = {
    "STATICS/Qmatrix.csv":
        "d76113614800422e523585492d9b4daea312f1e72f50396c9774e325bcf8db57",
    "STATICS/STATICS_qid_qname":
        "8c21cac69493f8af8238455965d00221379d07da88ab1c34913dd6e8672043e9",
    "STATICS/STATICS_qid_sid_sname":
        "6893c8a25ad1b2ed3aad0af1ac6938e48802f2aaf39877528d2336c53676ef24",
    "STATICS/STATICS_sid_sname":
        "1cb92976bb228f165e7ddbf7c2ad45c07da5a2c8f0cbaa0b3076c5dc3c0a1101",
    "STATICS/STATICS_test.csv":
        "aceadaab0d1504010cfe1eec8493ba8f02773a801b7cb6da3c266ced444432dd",
    "STATICS/STATICS_train.csv":
        "a8e1b27f6d47d0c890e5d45b3ac01f9fd3a9d580c9928afffcf3ed00353b9a68",
    "STATICS/STATICS_train1.csv":
        "f671f233770ddb906d7253ce714aff74c814323fc47689abe5ed7a531ef0476c",
    "STATICS/STATICS_train2.csv":
        "d61f04cf3b6221fe6ff45d41916c1e13b5c05f27b006f086693add5b76ce097c",
    "STATICS/STATICS_train3.csv":
        "5dc322b9d3542987beb478f2011472eb6921bd1b4b056f5b2898a08bb3a991ef",
    "STATICS/STATICS_train4.csv":
        "3e43dc51878c788ce0e4cd3b4fa7d4aaf58ed2202a82c7483a2d0bcdad133de2",
    "STATICS/STATICS_train5.csv":
        "a85ac0a6be4d8a8edb85ededc632bc65120bba14f957d6fc8549d9da09e21cca",
    "STATICS/STATICS_valid1.csv":
        "43aade6b1e2b4c2273a2b85eb7e23dee3533457e1160cbfb535d724192531e33",
    "STATICS/STATICS_valid2.csv":
        "56dd5dec55fd9ba28799746e13ad059ea45be85f3c464d611e2edeeda2024d2d",
    "STATICS/STATICS_valid3.csv":
        "10675bcdc55c94a080876f336e70ea98420eb5f79afcd06982d1af443915e11c",
    "STATICS/STATICS_valid4.csv":
        "1273d14f187a38271d560fb33cedd5692fcc81d4841328b594c674ae7bf6f4e2",
    "STATICS/STATICS_valid5.csv":
        "1368aece894a08d6c454d35fc232d02565d2e3ec70ea56bea597f6f84b95c02e",
    "STATICS/data_log":
        "c73a7f6f7753de8bd791b82c70c2aeb11b28c316597afd22fdd42ffaa126e36e",
    "assist2009_updated/assist2009_updated_qid_sid":
        "042d64e0d93e379b9390ab68b47cb8796886a61e24924b4c2f3ecc99d5a2983a",
    "assist2009_updated/assist2009_updated_qname_qid":
        "34b13b23b1e750e79132537924dc6d6b56f0086a046be18e175718da7bd9d81f",
    "assist2009_updated/assist2009_updated_skill_mapping.txt":
        "fe9375c05ef1eced388179f968babcf3553dc19f1d19ddf89bf91fa809bbec29",
    "assist2009_updated/assist2009_updated_sname_sid":
        "92c1b2028612b34f6751c6f67e6ba5c4c83a5f43d59488e7e86c1c165bf25535",
    "assist2009_updated/assist2009_updated_test.csv":
        "2e8f1d7600543aededa31323343f7d762b8f51c53c0caca852e813b67fe4e823",
    "assist2009_updated/assist2009_updated_train.csv":
        "5b851c65f665474a0993d86e87901adb1e0916c0d80fe7fce4096e6641924c74",
    "assist2009_updated/assist2009_updated_train1.csv":
        "3816a773851dd0a727322cf9396fd14a652c3a3ff07e71a56ae2ea43f4164201",
    "assist2009_updated/assist2009_updated_train2.csv":
        "9bc46dccd674657d730f22869da3ce7667a57c34e1c511067d6bc7f4c865bea9",
    "assist2009_updated/assist2009_updated_train3.csv":
        "78d66030acf16a75031d93be77e247370d6d764bc40794f8d0a40a762568aa0b",
    "assist2009_updated/assist2009_updated_train4.csv":
        "37b7c55f68965aac0a8e9434fc39cca137d376a18c5839ce6b368612dbabccad",
    "assist2009_updated/assist2009_updated_train5.csv":
        "7c5c1e8f82ecd5b90522d4a544f81810bd0b5629a9f0fb75848a219c09d78d33",
    "assist2009_updated/assist2009_updated_valid1.csv":
        "e4fff52e91a4b140207de7590e7bc131efa595f42fdfb3983729bc3faa5b5262",
    "assist2009_updated/assist2009_updated_valid2.csv":
        "f9abe32803603d8bd1f7df7275d7327462f205ee0ff29ae558a35e69e246f3dc",
    "assist2009_updated/assist2009_updated_valid3.csv":
        "275e96b63290dd9c47ca224ec7c089385041fbec8a66918631729907025da323",
    "assist2009_updated/assist2009_updated_valid4.csv":
        "4b3c59ca825eb0ebac2039efaec1722e2c93b6c4a5cab1bc3554cffec597369f",
    "assist2009_updated/assist2009_updated_valid5.csv":
        "14923acd4ca909d0359dbecdf4322adbe49c645453ba1405eed864a454baa001",
    "assist2009_updated/clustered_skill_name.txt":
        "47fe091ec20082e1d274bc869a36bdf8662914b844677ff44f1324aeb9b56dbb",
}
KNOWLEDGE_TRACING_FILES = {
    name: RemoteFile(f"{DKVMN_URL}/{name}", digest)
    for name, digest in _KNOWLEDGE_TRACING_SHA256.items()}
KNOWLEDGE_TRACING_DATASETS = ("STATICS", "assist2009_updated")
# The files a loader reads: train, test and folds 1-5 of train/valid. The
# other files of a dataset's folder map ids to names.
KNOWLEDGE_TRACING_SPLITS = ("train", "test") + tuple(
    f"{part}{fold}" for fold in range(1, 6) for part in ("train", "valid"))


def sha256_file(path: str) -> str:
  """The SHA-256 of a file as 64 lowercase hex digits."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _checked_hash(value: str, what: str) -> str:
  value = value.strip().lower()
  if not _HEX64.fullmatch(value):
    raise ValueError(f"{what}: {value!r} is not a SHA-256 (64 hex digits).")
  return value


def recorded_sha256(path: str) -> Optional[str]:
  """The hash that trust on first use recorded for `path`, if any."""
  record = path + RECORD_SUFFIX
  if not os.path.exists(record):
    return None
  with open(record) as f:
    fields = f.read().split()
  return _checked_hash(fields[0] if fields else "", record)


def _download(url: str, path: str, expected: Optional[str], progress: bool,
              timeout: float) -> str:
  """Streams `url` to `path` via a temporary file; returns the SHA-256."""
  digest = hashlib.sha256()
  # Every check raises inside the block, so that a failed, truncated or
  # tampered download is deleted and never renamed to `path`.
  with io_lib.atomic_file(path) as out:
    try:
      request = urllib.request.Request(url,
                                       headers={"User-Agent": "metajax"})
      with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        # A bar only where it helps: large or unknown sizes.
        quiet = not progress or (total is not None and total < 4 * _CHUNK)
        with tqdm.tqdm(total=total, unit="B", unit_scale=True,
                       unit_divisor=1024, desc=os.path.basename(path),
                       disable=quiet) as bar:
          received = 0
          for chunk in iter(lambda: response.read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    except urllib.error.HTTPError as e:
      raise DownloadError(f"downloading {url} failed: HTTP {e.code} "
                          f"{e.reason}.") from None
    except urllib.error.URLError as e:
      raise DownloadError(f"could not reach {url}: {e.reason}.") from None
    except (http.client.HTTPException, OSError) as e:
      raise DownloadError(f"downloading {url} failed: {e!r}.") from None
    if total is not None and received != total:
      raise DownloadError(f"downloading {url} failed: received {received} of "
                          f"{total} bytes.")
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
      raise ChecksumError(
          f"{url}: SHA-256 mismatch, expected {expected} but got {actual}; "
          f"the download was discarded, {path} was not written.")
  return actual


def _trust(url: str, path: str, actual: str) -> None:
  record = path + RECORD_SUFFIX
  io_lib.write_atomic(record, f"{actual}  {os.path.basename(path)}\n")
  warnings.warn(
      f"no known SHA-256 for {url}: trusting {path} on first use and "
      f"recording its hash, {actual}, in {record}; later calls verify "
      f"against it. Compare it with a trusted source, then pin it with "
      f"sha256=...", stacklevel=3)


def fetch(url: str, destination: str, sha256: Optional[str] = None, *,
          trust_on_first_use: bool = False, progress: bool = True,
          timeout: float = 60.0) -> str:
  """Downloads `url` into a file or cache folder unless already there.

  The expected hash is `sha256` if given, else the one recorded beside the
  file by an earlier trust-on-first-use download (`<file>.sha256`). A file
  already at the destination is verified against it and returned without
  network access. Otherwise the download streams to a temporary file beside
  it, is hashed on the way and renamed into place only when the hash
  matches; on any failure the partial file is deleted.

  Args:
    url: what to download (http, https or file).
    destination: the file to write, or an existing folder (or a path ending
      in a separator) to hold it under the last component of the URL.
    sha256: expected SHA-256, hex.
    trust_on_first_use: with no expected hash, accept the first download (or
      the file already there), record its hash in `<file>.sha256` and warn.
      Without it, a missing hash is an error.
    progress: show a progress bar for downloads of 4 MiB or more (or of
      unknown size).
    timeout: seconds to wait on the connection.

  Returns:
    The path of the verified file.

  Raises:
    ChecksumError: the cached or downloaded file has another hash (naming
      the file or URL, the expected and the actual hash).
    DownloadError: HTTP error, unreachable host or truncated transfer
      (naming the URL).
    ValueError: no expected hash and no `trust_on_first_use`.
  """
  path = os.fspath(destination)
  if os.path.isdir(path) or path.endswith(("/", os.sep)):
    name = os.path.basename(urllib.parse.unquote(
        urllib.parse.urlsplit(url).path))
    if not name:
      raise ValueError(f"{url} names no file; give `destination` as a file "
                       f"path.")
    path = os.path.join(path, name)
  expected = (_checked_hash(sha256, f"sha256 of {url}") if sha256 else
              recorded_sha256(path))
  if expected is None and not trust_on_first_use:
    raise ValueError(
        f"no SHA-256 known for {url}; pass sha256=... or, to accept and "
        f"record whatever the server sends, trust_on_first_use=True.")
  if os.path.exists(path):
    actual = sha256_file(path)
    if expected is None:
      _trust(url, path, actual)
    elif actual != expected:
      raise ChecksumError(
          f"cached file {path}: SHA-256 mismatch, expected {expected} but "
          f"got {actual}; delete it to download {url} again.")
    return path
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  actual = _download(url, path, expected, progress, timeout)
  if expected is None:
    _trust(url, path, actual)
  return path


def download_omniglot(cache_dir: str, base_url: Optional[str] = None,
                      files: Optional[Sequence[str]] = None,
                      sha256: Optional[Mapping[str, str]] = None, *,
                      trust_on_first_use: bool = False, progress: bool = True,
                      timeout: float = 60.0) -> Dict[str, str]:
  """Fetches Omniglot files of `OMNIGLOT_FILES` into `cache_dir`, verified.

  The official full zips, `images_background.zip` and
  `images_evaluation.zip`, have no SHA-256 in the registry: no copy was at
  hand to hash when it was written, and a guessed value would be worse than
  none. To fetch them, pass their hashes in `sha256` (e.g. taken from a copy
  you trust) or set `trust_on_first_use`, which accepts what the server
  sends, records its hash in `<file>.sha256` beside it, warns, and verifies
  against that record from then on. The small zips and the split files are
  always verified against the registry.

  Args:
    cache_dir: where the files go, under their registry names
      (`images_background.zip`, `vinyals_splits/train.txt`, ...).
    base_url: a mirror holding the files under their registry names (e.g.
      `http://host/omniglot`, serving `.../vinyals_splits/train.txt`);
      defaults to each file's official URL.
    files: registry names to fetch; defaults to `OMNIGLOT_DEFAULT` (both
      full zips and the four split files).
    sha256: name -> expected SHA-256, overriding or supplying registry
      values.
    trust_on_first_use, progress, timeout: as in `fetch`.

  Returns:
    {registry name: local path} for every file in `files`.

  Raises:
    ValueError: an unknown name, or (before anything is downloaded) files
      with no known hash while `trust_on_first_use` is off.
    ChecksumError, DownloadError: as in `fetch`.
  """
  names = tuple(OMNIGLOT_DEFAULT if files is None else files)
  sha256 = dict(sha256 or {})
  unknown = sorted((set(names) | set(sha256)) - set(OMNIGLOT_FILES))
  if unknown:
    raise ValueError(f"unknown Omniglot file(s) {unknown}; known: "
                     f"{sorted(OMNIGLOT_FILES)}.")
  paths = {n: os.path.join(cache_dir, *n.split("/")) for n in names}
  expected = {n: sha256.get(n) or OMNIGLOT_FILES[n].sha256 for n in names}
  unhashed = [n for n in names if expected[n] is None and
              recorded_sha256(paths[n]) is None]
  if unhashed and not trust_on_first_use:
    raise ValueError(
        f"no SHA-256 known for {unhashed}; pass sha256={{name: hash}} from a "
        f"copy you trust or, to accept and record what the server sends, "
        f"trust_on_first_use=True.")
  for name in names:
    fetch(_registry_url(OMNIGLOT_FILES, name, base_url), paths[name],
          expected[name], trust_on_first_use=trust_on_first_use,
          progress=progress, timeout=timeout)
  return paths


def download_knowledge_tracing(name: str, data_dir: Optional[str] = None,
                               base_url: Optional[str] = None, *,
                               side_files: bool = False,
                               progress: bool = True,
                               timeout: float = 60.0) -> str:
  """Fetches a knowledge-tracing dataset of the DKVMN release, verified.

  The files are those of github.com/jennyzhang0215/DKVMN, folder
  `data/<name>/`, at a pinned commit (`DKVMN_URL`), and each is checked
  against its SHA-256 in `KNOWLEDGE_TRACING_FILES`. Files already in the
  folder are verified instead of downloaded, so a call after an interrupted
  one fetches only what is missing; a failed or tampered download never
  leaves a file under its final name.

  Args:
    name: "assist2009_updated" (ASSISTments 2009) or "STATICS"
      (Statics2011), as in `KNOWLEDGE_TRACING_DATASETS`.
    data_dir: the data folder, resolved by `paths.data_dir` (by default
      `$METAJAX_DATA_DIR` or the per-user folder).
    base_url: a mirror holding the files as `<base_url>/<name>/<file>`,
      like the release's `data/` folder; defaults to `DKVMN_URL`.
    side_files: also fetch the files mapping ids to names (e.g.
      `STATICS_qid_qname`, `Qmatrix.csv`); the loader does not need them.
    progress, timeout: as in `fetch`.

  Returns:
    The folder `<data_dir>/knowledge_tracing/<name>`, holding
    `<name>_{train,test}.csv` and `<name>_{train,valid}<k>.csv`, k = 1..5.

  Raises:
    ValueError: an unknown `name`.
    ChecksumError, DownloadError: as in `fetch`, naming the file's URL.
  """
  if name not in KNOWLEDGE_TRACING_DATASETS:
    raise ValueError(f"unknown knowledge-tracing dataset {name!r}; the "
                     f"downloadable ones are {KNOWLEDGE_TRACING_DATASETS}.")
  root = os.path.join(paths_lib.data_dir(data_dir), "knowledge_tracing")
  names = [f"{name}/{name}_{split}.csv" for split in KNOWLEDGE_TRACING_SPLITS]
  if side_files:
    names += sorted(n for n in KNOWLEDGE_TRACING_FILES
                    if n.startswith(f"{name}/") and n not in names)
  for file in names:
    fetch(_registry_url(KNOWLEDGE_TRACING_FILES, file, base_url),
          os.path.join(root, *file.split("/")),
          KNOWLEDGE_TRACING_FILES[file].sha256, progress=progress,
          timeout=timeout)
  return os.path.join(root, name)


def _registry_url(files: Mapping[str, RemoteFile], name: str,
                  base_url: Optional[str]) -> str:
  """Where to get registry entry `name`: its URL, or below a mirror's."""
  if base_url is None:
    return files[name].url
  return f"{base_url.rstrip('/')}/{urllib.parse.quote(name)}"
