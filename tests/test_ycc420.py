"""4:2:0 planes against libjpeg-turbo (simplejpeg), bit for bit, on the COCO fixture images.

At quality 100 every quantisation step is 1 for luma and chroma tables alike, so a grayscale
JPEG of the planes layout and a colour 4:2:0 JPEG of the same planes code the same DCT
coefficients: their decoded planes are equal, and the colour JPEG's RGB decode is libjpeg's
upsampling + colour conversion of exactly the planes the grayscale JPEG gives us.
"""
import cv2
import jax
import numpy as np
import pytest
import simplejpeg

from sbpose_jax.data import ycc420


def _images(fixtures_dir):
  rng = np.random.default_rng(0)
  out = []
  for name in sorted((fixtures_dir / "coco").glob("*.jpg")):
    img = np.ascontiguousarray(cv2.imread(str(name))[:240, :288])
    img[:32, :48] = rng.integers(0, 256, (32, 48, 3))   # saturated colours: the clipping
    out.append(img)
  return out


def _planes_of(planes):
  h = planes.shape[0] * 2 // 3
  w = planes.shape[1]
  return (np.ascontiguousarray(planes[:h]), np.ascontiguousarray(planes[h:, : w // 2]),
          np.ascontiguousarray(planes[h:, w // 2:]))


def test_forward_is_libjpeg_turbo(fixtures_dir):
  """Our RGB → YCbCr + downsampling gives the JPEG libjpeg-turbo writes from the BGR image."""
  for img in _images(fixtures_dir):
    planes = ycc420.bgr_to_planes(img)
    assert planes.shape == (360, 288) and planes.dtype == np.uint8
    ref = simplejpeg.encode_jpeg(img, quality=100, colorspace="BGR", colorsubsampling="420")
    assert simplejpeg.encode_jpeg_yuv_planes(*_planes_of(planes), quality=100) == ref


def test_inverse_is_libjpeg_turbo_on_host_and_device(fixtures_dir):
  """Decoded planes → colour equals libjpeg-turbo's decode of the same coefficients: max 0."""
  decoded, refs = [], []
  for img in _images(fixtures_dir):
    planes = ycc420.bgr_to_planes(img)
    ok, gray = cv2.imencode(".jpg", planes, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    decoded.append(simplejpeg.decode_jpeg(gray.tobytes(), colorspace="GRAY")[..., 0])
    colour = simplejpeg.encode_jpeg_yuv_planes(*_planes_of(planes), quality=100)
    refs.append(simplejpeg.decode_jpeg(colour, colorspace="RGB"))
    assert np.abs(decoded[-1].astype(int) - planes).max() <= 2   # q100: near-lossless
  decoded, refs = np.stack(decoded), np.stack(refs)
  np.testing.assert_array_equal(ycc420.planes_to_colour(decoded), refs)
  np.testing.assert_array_equal(ycc420.planes_to_colour(decoded[0], "bgr"), refs[0, ..., ::-1])
  on_device = jax.jit(ycc420.planes_to_colour_jnp, static_argnums=1)
  np.testing.assert_array_equal(np.asarray(on_device(decoded, "rgb")), refs)
  np.testing.assert_array_equal(np.asarray(on_device(decoded, "bgr")), refs[..., ::-1])


def test_layout_checks():
  assert ycc420.layout_shape((288, 192)) == (432, 192)
  assert ycc420.crop_shape((432, 192)) == (288, 192)
  with pytest.raises(ValueError, match="even"):
    ycc420.layout_shape((287, 192))
  with pytest.raises(ValueError, match="planes layout"):
    ycc420.crop_shape((431, 192))
