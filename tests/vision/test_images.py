"""Tests for zaya_vl.vision.images: every source kind, mode conversions, rejections.

Expected pixel values are computed by hand in the comments, not by calling the code
under test.
"""

from __future__ import annotations

import base64
import io
import pickle
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from zaya_vl.vision import ImageLoadError, load_image, load_images
from zaya_vl.vision import images as images_mod

RNG = np.random.default_rng(0)
REF = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # H=5, W=7 RGB reference


def _png_bytes(im: Image.Image, **save_kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **save_kw)
    return buf.getvalue()


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def _rgb(out: Image.Image) -> np.ndarray:
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    return np.asarray(out)


def _raises(match_name: str, match_reason: str):
    """pytest.raises for ImageLoadError whose message names the image and the reason."""
    return pytest.raises(
        ImageLoadError, match=re.escape(match_name) + r".*" + match_reason
    )


# ----------------------------------------------------------------------- source kinds


@pytest.fixture(scope="module")
def ref_png(tmp_path_factory) -> tuple[Path, bytes]:
    data = _png_bytes(Image.fromarray(REF))
    path = tmp_path_factory.mktemp("img") / "ref image.png"  # space: exercises file:// quoting
    path.write_bytes(data)
    return path, data


SOURCE_KINDS = [
    "str path",
    "Path",
    "file URI",
    "data URI",
    "bytes",
    "bytearray",
    "memoryview",
    "PIL RGB",
    "PIL lazily opened",
    "dict bytes",
    "dict path",
    "numpy HxWx3",
]


def _make_source(kind: str, path: Path, data: bytes):
    return {
        "str path": lambda: str(path),
        "Path": lambda: path,
        "file URI": lambda: path.as_uri(),
        "data URI": lambda: "data:image/png;base64," + base64.b64encode(data).decode(),
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "memoryview": lambda: memoryview(data),
        "PIL RGB": lambda: Image.fromarray(REF),
        "PIL lazily opened": lambda: Image.open(io.BytesIO(data)),
        "dict bytes": lambda: {"bytes": data, "path": "whatever/in/archive.png"},
        "dict path": lambda: {"bytes": None, "path": str(path)},
        "numpy HxWx3": lambda: REF.copy(),
    }[kind]()


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_every_source_kind_gives_the_reference_pixels(kind, ref_png):
    src = _make_source(kind, *ref_png)
    out = load_image(src)
    np.testing.assert_array_equal(_rgb(out), REF)
    assert out.size == (7, 5)
    if isinstance(src, Image.Image):
        assert out is not src  # never hand back (and let callers mutate) the input object


def test_gray_numpy_and_single_channel_numpy_are_replicated():
    gray = np.array([[0, 100, 255]], dtype=np.uint8)
    expected = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(_rgb(load_image(gray)), expected)
    np.testing.assert_array_equal(_rgb(load_image(gray[..., None])), expected)


def test_pil_input_is_not_mutated():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    load_image(rgba)
    assert rgba.mode == "RGBA" and rgba.getpixel((0, 0)) == (0, 0, 0, 0)


# ---------------------------------------------------------------------- mode conversion


def test_rgba_transparent_becomes_white_not_black():
    arr = np.array(
        [[[10, 20, 30, 255], [0, 0, 0, 0], [200, 0, 0, 0], [0, 0, 0, 128]]], dtype=np.uint8
    )
    for src in (Image.fromarray(arr), _png_bytes(Image.fromarray(arr)), arr):
        px = _rgb(load_image(src))[0]
        assert tuple(px[0]) == (10, 20, 30)  # opaque: unchanged
        assert tuple(px[1]) == (255, 255, 255)  # fully transparent black -> white
        assert tuple(px[2]) == (255, 255, 255)  # colour under alpha=0 doesn't leak
        # half-transparent black over white: 255 * (1 - 128/255) = 127
        assert all(abs(int(v) - 127) <= 1 for v in px[3])


def test_la_transparent_becomes_white():
    la = Image.fromarray(np.array([[[40, 255], [40, 0]]], dtype=np.uint8), mode="LA")
    px = _rgb(load_image(_png_bytes(la)))[0]
    assert tuple(px[0]) == (40, 40, 40) and tuple(px[1]) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])  # 0 red, 1 green, 2 blue
    p.putdata([0, 1, 2])
    p.info["transparency"] = 0  # red index is transparent
    data = _encode(p, fmt) if fmt == "GIF" else _png_bytes(p, transparency=0)
    reopened = Image.open(io.BytesIO(data))
    assert reopened.mode == "P" and "transparency" in reopened.info  # really exercises tRNS
    px = _rgb(load_image(data))[0]
    assert [tuple(v) for v in px] == [(255, 255, 255), (0, 255, 0), (0, 0, 255)]


def test_palette_without_transparency_uses_palette():
    p = Image.new("P", (2, 1))
    p.putpalette([9, 8, 7, 1, 2, 3])
    p.putdata([1, 0])
    px = _rgb(load_image(_png_bytes(p)))[0]
    assert [tuple(v) for v in px] == [(1, 2, 3), (9, 8, 7)]


def test_l_and_1_modes():
    l_img = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert [tuple(v) for v in _rgb(load_image(_png_bytes(l_img)))[0]] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]
    bw = Image.new("1", (2, 1))
    bw.putpixel((1, 0), 1)
    assert [tuple(v) for v in _rgb(load_image(_png_bytes(bw)))[0]] == [(0, 0, 0), (255, 255, 255)]


def test_cmyk_tiff():
    cmyk = Image.new("CMYK", (4, 1))
    for x, v in enumerate([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (128, 0, 0, 128)]):
        cmyk.putpixel((x, 0), v)
    data = _encode(cmyk, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    px = [tuple(int(c) for c in v) for v in _rgb(load_image(data))[0]]
    # R = (255-C)(255-K)/255 etc.: white; pure cyan -> (0,255,255); K=255 -> black;
    # (128,0,0,128): R = 127*127/255 = 63.25 -> 63, G = B = 255*127/255 = 127.
    assert px[:3] == [(255, 255, 255), (0, 255, 255), (0, 0, 0)]
    assert all(abs(a - b) <= 1 for a, b in zip(px[3], (63, 127, 127)))


# 16-bit values and their hand-computed 8-bit images, v * 255 / 65535 rounded:
# 0 -> 0, 65535 -> 255, 32768 -> 127.502 -> 128, 25700 (=257*100) -> 100, 1000 -> 3.89 -> 4.
U16 = np.array([[0, 65535, 32768, 25700, 1000]], dtype=np.uint16)
U16_EXPECTED = [0, 255, 128, 100, 4]


@pytest.mark.parametrize("kind", ["PNG file", "TIFF file", "I;16 PIL", "I;16B PIL", "I PIL", "numpy uint16"])
def test_16bit_scaled_by_bit_depth_not_clipped(kind):
    if kind in ("PNG file", "TIFF file"):
        src = _encode(Image.fromarray(U16), kind.split()[0])
        assert Image.open(io.BytesIO(src)).mode.startswith("I;16")
    elif kind == "I;16 PIL":
        src = Image.fromarray(U16)
        assert src.mode == "I;16"
    elif kind == "I;16B PIL":
        src = Image.frombytes("I;16B", (5, 1), U16.astype(">u2").tobytes())
    elif kind == "I PIL":
        src = Image.fromarray(U16.astype(np.int32))
        assert src.mode == "I"
    else:
        src = U16
    px = _rgb(load_image(src))[0]
    assert px[:, 0].tolist() == U16_EXPECTED
    assert (px[:, 0] == px[:, 1]).all() and (px[:, 1] == px[:, 2]).all()


def test_float_and_out_of_range_int_grayscale():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert f.mode == "F"
    # [0, 1] floats are full-scale 1.0: 0 -> 0, 0.5 -> 127.5 -> 128 (rint), 1 -> 255
    assert _rgb(load_image(f))[0][:, 0].tolist() == [0, 128, 255]
    # Values outside any standard range are stretched min..max: -10 -> 0, 10 -> 255.
    i = Image.fromarray(np.array([[-10, 0, 10]], dtype=np.int32))
    assert _rgb(load_image(i))[0][:, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(
    "orientation, red_at",
    [
        (6, (1, 0)),  # "rotate 90° clockwise to display": top-left goes to top-right
        (8, (0, 2)),  # "rotate 90° counter-clockwise": top-left goes to bottom-left
        (3, (2, 1)),  # 180°: top-left goes to bottom-right
    ],
)
def test_exif_orientation_applied(orientation, red_at):
    im = Image.new("RGB", (3, 2), (0, 0, 255))
    im.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = load_image(_png_bytes(im, exif=exif))
    expected_size = (3, 2) if orientation == 3 else (2, 3)
    assert out.size == expected_size
    assert out.getpixel(red_at) == (255, 0, 0)
    reds = [(x, y) for x in range(out.width) for y in range(out.height) if out.getpixel((x, y)) == (255, 0, 0)]
    assert reds == [red_at]


def test_unreadable_exif_warns_and_keeps_image(monkeypatch):
    im = Image.new("RGB", (3, 2), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6

    def boom(*a, **k):
        raise SyntaxError("bad exif")

    monkeypatch.setattr(images_mod.ImageOps, "exif_transpose", boom)
    with pytest.warns(UserWarning, match="pic.png.*EXIF"):
        out = load_image(_png_bytes(im, exif=exif), name="pic.png")
    assert out.size == (3, 2)


# ---------------------------------------------------------------------------- rejections


def test_missing_file(tmp_path):
    missing = tmp_path / "nope" / "scan.png"
    with _raises(str(missing), "file not found"):
        load_image(missing)
    with _raises(missing.as_uri(), "file not found"):
        load_image(missing.as_uri())


def test_directory_is_rejected(tmp_path):
    with _raises(str(tmp_path), "directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("url", ["http://example.com/a.png", "HTTPS://example.com/a.png"])
def test_remote_url_is_not_fetched(url):
    with _raises(url, "remote URLs are not fetched"):
        load_image(url)


def test_corrupt_bytes_and_file(tmp_path):
    junk = b"this is not an image"
    with _raises(f"bytes[{len(junk)}]", "cannot identify image"):
        load_image(junk)
    f = tmp_path / "notes.png"
    f.write_bytes(junk)
    with _raises(str(f), "cannot identify image"):
        load_image(f)
    with _raises("bytes[0]", "empty"):
        load_image(b"")


@pytest.fixture(scope="module")
def noise_png() -> bytes:
    # Random pixels don't compress, so IDAT is large and a cut lands inside it.
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    return _png_bytes(Image.fromarray(noise))


def test_truncated_png(tmp_path, noise_png):
    f = tmp_path / "cut.png"
    f.write_bytes(noise_png[: len(noise_png) * 6 // 10])
    with _raises(str(f), "corrupt or truncated image data"):
        load_image(f)
    with Image.open(f) as lazy:
        assert lazy.size == (64, 64)  # the header still reads: the failure is in the pixels
        with _raises(str(f), "corrupt or truncated image data"):  # named by its filename
            load_image(lazy)


def test_over_budget_is_checked_from_header_before_decoding(noise_png):
    with _raises("bytes[", r"64x64 = 4,096 pixels exceeds max_pixels=4,095"):
        load_image(noise_png, max_pixels=4095)
    assert load_image(noise_png, max_pixels=4096).size == (64, 64)
    # A truncated file has a valid header but undecodable pixels: getting the budget
    # error (not a truncation error) proves the size was checked before decoding.
    cut = noise_png[: len(noise_png) // 2]
    with _raises("cut.png", "exceeds max_pixels"):
        load_image(cut, name="cut.png", max_pixels=1000)
    with _raises("cut.png", "corrupt or truncated image data"):
        load_image(cut, name="cut.png")


def test_over_budget_applies_to_pil_and_numpy():
    with _raises("PIL image (RGB 7x5)", "exceeds max_pixels=34"):
        load_image(Image.fromarray(REF), max_pixels=34)
    with _raises("array(5x7x3 uint8)", "exceeds max_pixels=34"):
        load_image(REF, max_pixels=34)


@pytest.mark.parametrize("pixels, what", [(15 * 10, "warning"), (20 * 20, "error")])
def test_pillow_decompression_bomb_guard_is_reported(monkeypatch, pixels, what):
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both must become
    # ImageLoadError naming the image and the limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    w = 15 if pixels == 150 else 20
    data = _png_bytes(Image.new("RGB", (w, pixels // w)))
    # "always" (not "error") so that the test itself does not turn Pillow's warning into
    # an exception: load_image must do that on its own, and nothing may leak out.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _raises("bomb.png", "MAX_IMAGE_PIXELS = 100"):
            load_image(data, name="bomb.png", max_pixels=None)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def _png_with_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR is patched to width x height, with a valid CRC."""
    data = bytearray(_png_bytes(Image.new("RGB", (1, 1))))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def test_zero_size():
    with _raises("array(0x4x3 uint8)", "zero width or height"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    zero_pil = Image.new("RGB", (0, 5))
    with _raises("PIL image (RGB 0x5)", "zero width or height"):
        load_image(zero_pil)
    with _raises("empty.png", r"zero width or height \(0x3\)"):
        load_image(_png_with_size(0, 3), name="empty.png")
    # the crafted-header helper itself produces a loadable file for a real size
    assert load_image(_png_with_size(1, 1)).size == (1, 1)


def test_min_side():
    with _raises("thin.png", "smaller than min_side=6"):
        load_image(REF, name="thin.png", min_side=6)  # 7x5: height 5 < 6
    assert load_image(REF, min_side=5).size == (7, 5)


def test_bad_data_uris():
    with _raises("data URI (image/png", "invalid base64"):
        load_image("data:image/png;base64,@@@not base64@@@")
    with _raises("data URI (image/png)", "no ','"):
        load_image("data:image/png;base64")
    junk = "data:image/png;base64," + base64.b64encode(b"x" * 2150).decode()
    with _raises("data URI (image/png, 2.1 KB)", "cannot identify image"):
        load_image(junk)


def test_data_uri_tolerates_line_breaks_and_missing_padding(ref_png):
    b64 = base64.b64encode(ref_png[1]).decode().rstrip("=")
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    np.testing.assert_array_equal(_rgb(load_image("data:image/png;base64," + wrapped)), REF)


def test_unsupported_sources():
    with _raises("array(5x7x3 float64)", "unsupported array"):
        load_image(REF.astype(np.float64))
    with pytest.raises(TypeError, match="unsupported image source type int"):
        load_image(42)
    with _raises("image dict", "neither 'bytes' nor 'path'"):
        load_image({"bytes": None, "path": None})


def test_name_overrides_description_and_long_strings_are_shortened():
    with _raises("invoice #7", "cannot identify image"):
        load_image(b"garbage", name="invoice #7")
    blob = "A" * 5000  # e.g. base64 passed without its data: prefix
    with pytest.raises(ImageLoadError, match="looks like base64") as ei:
        load_image(blob)  # ENAMETOOLONG or not found, depending on the OS: either way hinted
    assert len(str(ei.value)) < 400 and "(5000 chars)" in str(ei.value)


# ----------------------------------------------------------------- load_images, errors


def test_load_images_names_index_and_name(tmp_path, ref_png):
    path, data = ref_png
    outs = load_images([path, data, REF])
    assert len(outs) == 3 and all(o.size == (7, 5) for o in outs)

    missing = tmp_path / "scan.png"
    with pytest.raises(ImageLoadError, match=re.escape(f"image 2 ({missing}): file not found")) as ei:
        load_images([path, data, missing, data])
    assert ei.value.index == 2 and ei.value.name == str(missing) and ei.value.reason == "file not found"

    with pytest.raises(ImageLoadError, match=re.escape("image 1 (page-2): cannot identify image")):
        load_images([data, b"junk"], names=["page-1", "page-2"])
    with pytest.raises(TypeError, match="image 1: "):
        load_images([data, None])
    with pytest.raises(ValueError, match="2 sources but 1 names"):
        load_images([data, data], names=["a"])
    with pytest.raises(TypeError, match="sequence"):
        load_images(str(path))


def test_error_is_value_error_and_pickles():
    e = ImageLoadError("scan.png", "file not found", index=3)
    assert isinstance(e, ValueError)
    assert str(e) == "image 3 (scan.png): file not found"
    e2 = pickle.loads(pickle.dumps(e))
    assert (str(e2), e2.name, e2.reason, e2.index) == (str(e), "scan.png", "file not found", 3)
    assert str(ImageLoadError("a.png", "bad")) == "a.png: bad"
