"""Downloads into a cache folder, verified by SHA-256.

`fetch` streams one URL to a temporary file next to its destination, checks
its SHA-256 and only then renames it into place, so that the cache never
holds a partial or unverified file. A file already in the cache is verified
again instead of downloaded. `download_omniglot` fetches the official
Omniglot zips and the Vinyals split files through the `OMNIGLOT_FILES`
registry; its cache mirrors the layout of the project's shared data folder,
so its output reads with `omniglot_official.load_official` and
`omniglot.make_splits(split_dir=<cache>/vinyals_splits)`.

Only the standard library speaks HTTP here (`urllib`, which honours the
usual `*_proxy` environment variables).
"""

import hashlib
import http.client
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
import warnings
from typing import Dict, Mapping, NamedTuple, Optional, Sequence

import tqdm

LAKE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"
VINYALS_URL = ("https://raw.githubusercontent.com/jakesnell/"
               "prototypical-networks/master/data/omniglot/splits/vinyals")
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
  # A unique name per call: concurrent downloads never share a partial file,
  # and the final rename is atomic on one file system.
  temporary = f"{path}.{secrets.token_hex(4)}.part"
  digest = hashlib.sha256()
  try:
    try:
      request = urllib.request.Request(url,
                                       headers={"User-Agent": "metajax"})
      with urllib.request.urlopen(request, timeout=timeout) as response, open(
          temporary, "xb") as out:
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
          f"the download was discarded.")
    os.replace(temporary, path)
    return actual
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def _trust(url: str, path: str, actual: str) -> None:
  record = path + RECORD_SUFFIX
  with open(record, "w") as f:
    f.write(f"{actual}  {os.path.basename(path)}\n")
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
  network access. Otherwise the download streams to `<file>.<random>.part`,
  is hashed on the way and renamed into place only when the hash matches;
  on any failure the partial file is deleted.

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
    url = (OMNIGLOT_FILES[name].url if base_url is None else
           f"{base_url.rstrip('/')}/{urllib.parse.quote(name)}")
    fetch(url, paths[name], expected[name],
          trust_on_first_use=trust_on_first_use, progress=progress,
          timeout=timeout)
  return paths
