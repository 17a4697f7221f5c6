"""Image decoding for the image loaders, with errors that name the image.

Every loader decodes through `decode_image`, so that a damaged, hostile or
unexpected file fails the same way whatever the dataset: with an
`ImageDecodeError` (a ValueError) whose message starts with the file, or the
archive entry, at fault, or a FileNotFoundError for a missing file.
"""

import io
import os
import zlib
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

# Everything Pillow raises on a damaged or hostile file.
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error,
              Image.DecompressionBombError)
# How error messages describe the Pillow modes that loaders accept.
_MODE_NAMES = {"1": "1-bit", "L": "grayscale", "RGB": "RGB", "CMYK": "CMYK"}


class ImageDecodeError(ValueError):
  """An image that cannot be decoded, or is not what its dataset holds.

  The message starts with the file or archive entry at fault.
  """


def _describe(modes: Sequence[str]) -> str:
  names = [f"{_MODE_NAMES.get(m, m)} ({m!r})" for m in modes]
  return " or ".join(names) if len(names) < 3 else (
      f"{', '.join(names[:-1])} or {names[-1]}")


def decode_image(source: Union[bytes, str, os.PathLike], *, mode: str,
                 where: Optional[str] = None,
                 modes: Optional[Sequence[str]] = None,
                 size: Optional[int] = None, resize: bool = False,
                 formats: Optional[Sequence[str]] = None,
                 mode_hint: str = "") -> np.ndarray:
  """Decodes one image into a uint8 array, checking what it holds.

  Checks come in this order: readable, stored mode, size. Then the image is
  resized if asked and converted to `mode`.

  Args:
    source: the encoded bytes, or the path of an image file.
    mode: the Pillow mode of the result: "L" gives `[H, W]`, "RGB"
      `[H, W, 3]`. 1-bit images convert to 0 (black) and 255 (white).
    where: the image's name in error messages (a path, "zip:entry", ...);
      defaults to `source` when it is a path.
    modes: the Pillow modes the stored image may have; None accepts every
      mode that Pillow converts to `mode`.
    size: the side the square image must have; None accepts any size.
    resize: resize an image of another size to `size` x `size` with Lanczos
      filtering, ignoring its aspect ratio, instead of raising.
    formats: the Pillow formats to accept, e.g. ("PNG",); None for any.
    mode_hint: a sentence appended to the error for a refused mode.

  Returns:
    uint8 `[H, W]` or `[H, W, C]`, `[size, size(, C)]` when `size` is given.

  Raises:
    FileNotFoundError: `source` is a path that does not exist.
    ImageDecodeError: the image is unreadable, or has a mode not in `modes`
      or another size than `size` (with `resize` off); the message starts
      with `where`.
  """
  if where is None:
    if isinstance(source, bytes):
      raise ValueError("decode_image: pass where= to name an image given as "
                       "bytes in errors.")
    where = os.fspath(source)
  what = "/".join(formats) if formats else "image"
  file = io.BytesIO(source) if isinstance(source, bytes) else source
  try:
    # Leaving the block closes the file; the loaded pixels stay usable.
    with Image.open(file, formats=formats) as image:
      image.load()
  except FileNotFoundError:
    raise FileNotFoundError(f"image file not found: {where}") from None
  except PIL_ERRORS as e:
    raise ImageDecodeError(f"{where}: not a readable {what} ({e}).") from None
  if modes is not None and image.mode not in modes:
    hint = f" {mode_hint}" if mode_hint else ""
    raise ImageDecodeError(
        f"{where}: {what} mode {image.mode!r} ({len(image.getbands())} "
        f"channels); expected {_describe(modes)}.{hint}")
  if size is not None and image.size != (size, size):
    if not resize:
      raise ImageDecodeError(
          f"{where}: image is {image.size[0]}x{image.size[1]}, expected "
          f"{size}x{size}.")
    image = image.resize((size, size), Image.LANCZOS)
  return np.asarray(image.convert(mode), np.uint8)
