"""Image decoding shared by the loaders: results and errors naming the image."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from metajax.data import images


def encode(image, fmt="PNG"):
  buffer = io.BytesIO()
  image.save(buffer, format=fmt)
  return buffer.getvalue()


def test_bytes_and_paths_decode_alike(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
  data = encode(Image.fromarray(pixels))
  path = tmp_path / "a.png"
  path.write_bytes(data)
  from_bytes = images.decode_image(data, mode="RGB", where="a")
  from_path = images.decode_image(str(path), mode="RGB")
  assert from_bytes.dtype == np.uint8 and from_bytes.shape == (5, 7, 3)
  np.testing.assert_array_equal(from_bytes, pixels)
  np.testing.assert_array_equal(from_path, pixels)


def test_one_bit_images_become_0_and_255():
  image = Image.new("1", (4, 3), 1)
  image.putpixel((0, 0), 0)
  got = images.decode_image(encode(image), mode="L", where="x", modes=("1",))
  assert got.shape == (3, 4)
  assert got[0, 0] == 0 and (got.ravel()[1:] == 255).all()


def test_resize_or_refuse_another_size():
  data = encode(Image.new("L", (12, 10), 7))
  got = images.decode_image(data, mode="RGB", where="x", size=8, resize=True)
  assert got.shape == (8, 8, 3) and (got == 7).all()
  with pytest.raises(images.ImageDecodeError,
                     match=re.escape("zip:a.png: image is 12x10, expected "
                                     "8x8.")):
    images.decode_image(data, mode="RGB", where="zip:a.png", size=8)


def test_errors_name_the_image(tmp_path):
  rgba = encode(Image.new("RGBA", (2, 2)))
  with pytest.raises(images.ImageDecodeError, match=re.escape(
      "e: PNG mode 'RGBA' (4 channels); expected 1-bit ('1') or grayscale "
      "('L'). Hint.")):
    images.decode_image(rgba, mode="L", where="e", modes=("1", "L"),
                        formats=("PNG",), mode_hint="Hint.")
  with pytest.raises(images.ImageDecodeError, match=re.escape(
      "e: image mode 'RGBA' (4 channels); expected RGB ('RGB'), grayscale "
      "('L') or CMYK ('CMYK').")):
    images.decode_image(rgba, mode="RGB", where="e",
                        modes=("RGB", "L", "CMYK"))
  with pytest.raises(ValueError, match="e: not a readable PNG"):
    images.decode_image(encode(Image.new("L", (2, 2)), "BMP"), mode="L",
                        where="e", formats=("PNG",))
  missing = str(tmp_path / "nowhere.png")
  with pytest.raises(FileNotFoundError,
                     match=re.escape(f"image file not found: {missing}")):
    images.decode_image(missing, mode="L")
  with pytest.raises(ValueError, match="pass where="):
    images.decode_image(rgba, mode="L")
