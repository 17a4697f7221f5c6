"""The official Omniglot release: PNG folders, zipped or extracted.

The official repository (brendenlake/omniglot, `python/`) publishes each set
as a zip of 105x105 PNGs laid out as

  images_background/<Alphabet>/characterNN/<id>_<drawer>.png

with `images_evaluation/` for the evaluation set and
`images_background_small1/`, `images_background_small2/` as two smaller
subsets of the background set. `<id>` is the 4-digit character id and
`<drawer>` the number (01-20) of the person who drew it. `load_official`
reads any mix of these zips and their extracted folders into the same
canonical `omniglot.OmniglotRaw` as the npz source.
"""

import os
import re
import zipfile
import zlib
from typing import (Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple, Union)

import numpy as np

from metajax.data import images as images_lib
from metajax.data.vision import omniglot

DRAWINGS = 20
SIZE = 105

_TOP = re.compile(r"images_(background|evaluation)")
_CHARACTER = re.compile(r"character\d+")
_DRAWING = re.compile(r"(\d+)_(\d+)\.png")
_LAYOUT = ("images_background*/<Alphabet>/characterNN/<id>_<drawer>.png (or "
           "images_evaluation*/...)")

PathLike = Union[str, os.PathLike]
# A source entry: its path parts from the `images_*` folder down, its bytes
# (None for a folder) and its description in error messages. Entries of
# operating-system clutter (names starting with ".", `__MACOSX/`) are left
# out.
_Entry = Tuple[Tuple[str, ...], Optional[bytes], str]
_Key = Tuple[str, str, str]  # (set, alphabet, character)


def _is_metadata(parts: Sequence[str]) -> bool:
  return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _zip_entries(path: str) -> Iterator[_Entry]:
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise ValueError(f"{path}: not a readable zip file ({e}).") from None
  with archive:
    for info in archive.infolist():
      name = info.filename.rstrip("/")
      where = f"{path}:{name}"
      parts = tuple(name.split("/"))
      if _is_metadata(parts):
        continue
      if info.is_dir():
        yield parts, None, where
        continue
      try:
        data = archive.read(info)
      except (zipfile.BadZipFile, zlib.error, EOFError, OSError,
              NotImplementedError) as e:
        raise ValueError(f"{where}: cannot be read from the zip ({e})."
                         ) from None
      yield parts, data, where


def _folder_entries(folder: str) -> Iterator[_Entry]:
  """Entries of one extracted `images_*` folder."""
  parent = os.path.dirname(folder)
  # Symlinked alphabet or character folders would otherwise be skipped.
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for name in dirs:
      path = os.path.join(root, name)
      yield tuple(os.path.relpath(path, parent).split(os.sep)), None, path
    for name in sorted(f for f in files if not f.startswith(".")):
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        yield tuple(os.path.relpath(path, parent).split(os.sep)), f.read(), path


def decode_png(data: bytes, where: str) -> np.ndarray:
  """Decodes one drawing into uint8 `[105, 105]`, 255 = paper, 0 = ink.

  The official files are 1-bit PNGs (white paper, black ink); grayscale PNGs
  are accepted when every pixel is 0 or 255, so that a re-encoded copy reads
  the same. Anything else raises a `metajax.data.images.ImageDecodeError`
  naming `where`.
  """
  pixels = images_lib.decode_image(data, mode="L", where=where,
                                   modes=("1", "L"), size=SIZE,
                                   formats=("PNG",))
  # A 1-bit image holds only 0 and 255, so any other level is from "L".
  gray = (pixels != 0) & (pixels != 255)
  if gray.any():
    raise images_lib.ImageDecodeError(
        f"{where}: gray levels {np.unique(pixels[gray])[:5].tolist()} "
        f"besides 0 and 255; Omniglot drawings are black and white.")
  return pixels


class _Character:
  """The drawings of one character folder, gathered while parsing."""

  def __init__(self, where: str):
    self.where = where
    self.id: Optional[str] = None
    self.drawings: Dict[int, Tuple[bytes, str]] = {}


def _read_source(entries: Iterable[_Entry]
                 ) -> Dict[_Key, Tuple[np.ndarray, str]]:
  """Parses and decodes one zip or folder.

  Returns:
    (set, alphabet, character) -> (uint8 `[20, 105, 105]` in drawer order,
    the character folder's description).
  """
  found: Dict[_Key, _Character] = {}
  for parts, data, where in entries:
    top = _TOP.match(parts[0])
    if not top:
      raise ValueError(f"{where}: outside an images_background* or "
                       f"images_evaluation* folder; expected {_LAYOUT}.")
    if data is None and len(parts) < 3:
      continue  # The set folder or an alphabet folder.
    if len(parts) != (3 if data is None else 4) or not _CHARACTER.fullmatch(
        parts[2]):
      raise ValueError(f"{where}: does not match the layout {_LAYOUT}.")
    key = (top.group(1), parts[1], parts[2])
    if key not in found:
      # Strip "/<file>" (or os.sep + file) to name the character folder.
      found[key] = _Character(
          where if data is None else where[:-len(parts[3]) - 1])
    if data is None:
      continue
    character = found[key]
    match = _DRAWING.fullmatch(parts[3])
    if not match:
      raise ValueError(f"{where}: not a drawing named <id>_<drawer>.png; "
                       f"expected {_LAYOUT}.")
    character.id = character.id or match.group(1)
    if match.group(1) != character.id:
      raise ValueError(f"{where}: character id {match.group(1)} differs from "
                       f"id {character.id} of the other drawings in the "
                       f"folder.")
    drawer = int(match.group(2))
    if drawer in character.drawings:
      raise ValueError(f"{where}: a second drawing of drawer {drawer} (the "
                       f"first is {character.drawings[drawer][1]}).")
    character.drawings[drawer] = (data, where)
  out = {}
  for key, character in found.items():
    if len(character.drawings) != DRAWINGS:
      raise ValueError(f"{character.where}: {len(character.drawings)} "
                       f"drawings, expected {DRAWINGS} (one per drawer).")
    images = np.stack([decode_png(data, where) for _, (data, where)
                       in sorted(character.drawings.items())])
    out[key] = (images, character.where)
  return out


def _sources(path: str) -> List[Tuple[str, Iterator[_Entry]]]:
  """The zips and `images_*` folders that `path` names or holds."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Omniglot source not found: {path}")
  if not os.path.isdir(path):
    return [(path, _zip_entries(path))]
  path = os.path.normpath(path)
  if _TOP.match(os.path.basename(path)):
    return [(path, _folder_entries(path))]
  out = []
  for name in sorted(os.listdir(path)):
    child = os.path.join(path, name)
    if not _TOP.match(name):
      continue
    if os.path.isdir(child):
      out.append((child, _folder_entries(child)))
    elif name.endswith(".zip"):
      out.append((child, _zip_entries(child)))
  if not out:
    raise ValueError(
        f"{path}: no images_background* or images_evaluation* folder or zip; "
        f"expected the official layout {_LAYOUT}.")
  return out


def load_official(sources: Union[PathLike, Sequence[PathLike]]
                  ) -> omniglot.OmniglotRaw:
  """Reads official Omniglot zips and/or extracted folders.

  Each source is one of:

  * a zip whose members lie under `images_background*/` or
    `images_evaluation*/` (e.g. `images_background.zip`,
    `images_background_small1.zip`);
  * an extracted `images_background*` / `images_evaluation*` folder;
  * a folder holding such zips and/or folders (e.g. a download cache); all
    of them are read.

  The set of a character is "background" under `images_background*` and
  "evaluation" under `images_evaluation*`; alphabet and character names are
  the folder names. The 20 drawings of a character are ordered by drawer
  number. A character found in several sources (the official small1 and
  small2 zips share the Greek and Latin alphabets; a small zip repeats
  characters of the full one) must be pixel-identical in all of them and is
  kept once. Operating-system clutter (names starting with ".", `__MACOSX/`)
  is skipped; anything else off the layout is an error.

  Args:
    sources: one path or a sequence of paths.

  Returns:
    The canonical `OmniglotRaw`: uint8 `[characters, 20, 105, 105]`,
    255 = paper, 0 = ink, sorted by (set, alphabet, character).

  Raises:
    FileNotFoundError: a source does not exist.
    ValueError: naming the file or character folder at fault, for an
      unreadable zip, a PNG that does not decode or is not a 105x105 black
      and white image, a character without exactly 20 drawings, entries off
      the layout, or a character that differs between two sources.
  """
  if isinstance(sources, (str, os.PathLike)):
    sources = [sources]
  if not sources:
    raise ValueError("no Omniglot sources given.")
  found: Dict[_Key, Tuple[np.ndarray, str]] = {}
  for source in sources:
    for name, entries in _sources(os.fspath(source)):
      characters = _read_source(entries)
      if not characters:
        raise ValueError(f"{name}: no Omniglot characters; expected the "
                         f"layout {_LAYOUT}.")
      for key, (images, where) in characters.items():
        if key not in found:
          found[key] = (images, where)
        elif not np.array_equal(found[key][0], images):
          raise ValueError(
              f"{key[0]} character {key[1]}/{key[2]} differs between "
              f"{found[key][1]} and {where}.")
  keys = list(found)
  return omniglot.canonical(omniglot.OmniglotRaw(
      np.stack([found[k][0] for k in keys]), tuple(k[0] for k in keys),
      tuple(k[1] for k in keys), tuple(k[2] for k in keys)))
