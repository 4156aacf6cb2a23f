"""Robust image loading for the vision tower.

One entry point, :func:`load_image`, turns whatever a user, a dataset row or an eval
harness hands us (path, ``file://`` URI, base64 data URI, raw bytes, PIL image,
``datasets.Image(decode=False)`` dict, numpy array) into a fully decoded RGB
``PIL.Image.Image``, or raises :class:`ImageLoadError` naming the image and the reason.

Why this module exists instead of a bare ``Image.open(x).convert("RGB")``:

* ``convert("RGB")`` drops alpha, which turns transparent background of a scanned
  document or a chart PNG *black*: text on it disappears. We composite onto white.
* 16-bit / 32-bit / float grayscale (TIFF scans, 16-bit PNGs) would be clipped at 255 by
  ``convert``, giving an almost all-white page; we scale by the real bit depth.
* Phone photos carry EXIF orientation; without ``exif_transpose`` the page is sideways.
* Pillow decodes lazily, so a truncated file otherwise fails later, deep inside the
  processor, with no idea which sample it was. We ``load()`` here, and every error names
  the image (and, in :func:`load_images`, its index).
* Pixel budget: we check the size from the header *before* decoding, so a
  decompression bomb costs a header read, not gigabytes of RAM.

No network access: http(s) URLs are rejected with a message saying so.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import struct
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = ["DEFAULT_MAX_PIXELS", "ImageLoadError", "load_image", "load_images"]

# Safety budget, not a resize target (the processor's pixel budget does the resizing).
# 64 MP covers a 600-dpi A3 scan (~7000x9900 = 69 MP is over; 600-dpi A4 ~ 35 MP is in)
# and stays below Pillow's own global guard (Image.MAX_IMAGE_PIXELS ~ 89.5 MP), so at
# defaults our clearer message is the one users see.
DEFAULT_MAX_PIXELS = 64_000_000

_HIGH_DEPTH_16 = {"I;16", "I;16L", "I;16B", "I;16N"}
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
_BASE64ISH = re.compile(r"[A-Za-z0-9+/=\s_-]+")


class ImageLoadError(ValueError):
    """An image could not be loaded. ``str(e)`` is ``"<name>: <reason>"``, or
    ``"image <index> (<name>): <reason>"`` when raised by :func:`load_images`.

    Attributes ``name``, ``reason`` and ``index`` (``None`` outside ``load_images``) are
    there for code that wants to log or skip bad samples without parsing the message.
    A ValueError subclass because the *value* passed in is bad, and so that generic
    ``except ValueError`` data-cleaning code catches it.
    """

    def __init__(self, name: str, reason: str, index: int | None = None):
        self.name = name
        self.reason = reason
        self.index = index
        label = name if index is None else f"image {index} ({name})"
        super().__init__(f"{label}: {reason}")

    def __reduce__(self):
        # Default exception pickling replays self.args (the one formatted message) into
        # __init__, which would fail; multiprocessing pools pickle worker exceptions.
        return (type(self), (self.name, self.reason, self.index))


# --------------------------------------------------------------------------- public API


def load_image(
    source: Any,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> Image.Image:
    """Load one image as a fully decoded RGB ``PIL.Image.Image``.

    ``source``: ``str`` / ``os.PathLike`` path, ``"file://..."``, ``"data:image/...;base64,..."``,
    ``bytes`` / ``bytearray`` / ``memoryview``, ``PIL.Image.Image``, a
    ``{"bytes": ..., "path": ...}`` dict (``datasets.Image(decode=False)``), or a numpy
    uint8 array of shape HxW or HxWxC (C in 1..4; HxW uint16 is read as 16-bit gray).

    ``name`` replaces the automatic description of the image in error messages.
    ``max_pixels`` (``None`` = no budget of our own) is checked against the header size
    before pixels are decoded. Pillow's process-global guard ``PIL.Image.MAX_IMAGE_PIXELS``
    still applies on top (raise that too to go beyond ~89 MP); its error and warning are
    turned into :class:`ImageLoadError`. ``min_side``: smallest allowed width/height;
    zero-size images are always rejected.

    Raises :class:`ImageLoadError` for anything wrong with the image itself and
    ``TypeError`` for a source of an unsupported Python type. Never returns the caller's
    own ``Image`` object (a new image is always produced), so callers may mutate it.
    """
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if not isinstance(min_side, (int, np.integer)) or min_side < 0:
        raise ValueError(f"min_side must be a non-negative int, got {min_side!r}")
    limits = (max_pixels, min_side)

    if isinstance(source, Image.Image):
        label = name or _describe_pil(source)
        return _finish(source, label, limits)

    if isinstance(source, np.ndarray):
        label = name or f"array({'x'.join(map(str, source.shape))} {source.dtype})"
        return _finish(_array_to_pil(source, label, limits), label, limits)

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = source.tobytes() if isinstance(source, memoryview) else bytes(source)
        return _load_bytes(data, name or f"bytes[{len(data)}]", limits)

    if isinstance(source, Mapping):
        return _load_mapping(source, name, limits)

    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(text, bytes):  # os.PathLike may return bytes paths
            text = os.fsdecode(text)
        if isinstance(source, str):
            m = _URL_SCHEME.match(text)
            scheme = m.group(1).lower() if m else ""
            if scheme == "data":
                return _load_data_uri(text, name, limits)
            if scheme in ("http", "https", "ftp"):
                raise ImageLoadError(
                    name or _shorten(text),
                    "remote URLs are not fetched (zaya_vl does no network I/O); "
                    "download it first and pass the local path or the bytes",
                )
            if scheme == "file":
                return _load_path(_file_uri_to_path(text, name), name or _shorten(text), limits)
        return _load_path(text, name or _shorten(text), limits)

    raise TypeError(
        f"{name or 'image'}: unsupported image source type {type(source).__name__}; expected "
        "a path, file:// or data: URI, bytes, PIL.Image.Image, {'bytes','path'} dict "
        "or numpy uint8 array"
    )


def load_images(
    sources: Iterable[Any],
    names: Iterable[str | None] | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> list[Image.Image]:
    """Load several images with :func:`load_image`; stops at the first failure and
    re-raises it as ``ImageLoadError("image <i> (<name>): <reason>")`` (``.index`` set)."""
    # A lone str/bytes/dict is iterable and would silently load "characters" or keys.
    if isinstance(sources, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image, Mapping, np.ndarray)):
        raise TypeError("load_images takes a sequence of image sources; use load_image for one")
    sources = list(sources)
    names = [None] * len(sources) if names is None else list(names)
    if len(names) != len(sources):
        raise ValueError(f"got {len(sources)} sources but {len(names)} names")
    out = []
    for i, (src, nm) in enumerate(zip(sources, names)):
        try:
            out.append(load_image(src, name=nm, max_pixels=max_pixels, min_side=min_side))
        except ImageLoadError as e:
            raise ImageLoadError(e.name, e.reason, index=i) from e
        except TypeError as e:
            raise TypeError(f"image {i}: {e}") from e
    return out


# ------------------------------------------------------------------- source → PIL image


def _load_path(path: str, label: str, limits) -> Image.Image:
    # Open the file ourselves so "file system" problems (missing, directory, permission)
    # get their own message, separate from "this is not a decodable image".
    try:
        fp = open(path, "rb")
    except FileNotFoundError:
        raise ImageLoadError(label, f"file not found{_path_hint(path)}") from None
    except IsADirectoryError:
        raise ImageLoadError(label, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageLoadError(label, "permission denied") from None
    except OSError as e:
        raise ImageLoadError(label, f"cannot read file ({e.strerror or e}){_path_hint(path)}") from e
    with fp:
        return _decode(fp, label, limits)


def _load_bytes(data: bytes, label: str, limits) -> Image.Image:
    if not data:
        raise ImageLoadError(label, "empty data (0 bytes)")
    return _decode(io.BytesIO(data), label, limits)


def _load_mapping(d: Mapping, name: str | None, limits) -> Image.Image:
    # datasets.Image(decode=False) yields {"bytes": b"..." | None, "path": str | None}:
    # bytes win (the path may point inside an archive or a remote repo), else the path.
    data, path = d.get("bytes"), d.get("path")
    if data is not None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name or path or 'image'}: dict 'bytes' must be bytes, got {type(data).__name__}")
        data = data.tobytes() if isinstance(data, memoryview) else bytes(data)
        return _load_bytes(data, name or (os.fspath(path) if path else f"bytes[{len(data)}]"), limits)
    if path:
        return load_image(path, name=name, max_pixels=limits[0], min_side=limits[1])
    raise ImageLoadError(name or "image dict", "dict has neither 'bytes' nor 'path' set")


def _load_data_uri(uri: str, name: str | None, limits) -> Image.Image:
    # RFC 2397: data:[<mediatype>][;base64],<data>
    header, sep, payload = uri[5:].partition(",")
    params = header.split(";")
    media = params[0].strip() or "no media type"
    if not sep:
        raise ImageLoadError(name or f"data URI ({media})", "malformed data URI: no ',' before the payload")
    if any(p.strip().lower() == "base64" for p in params[1:]):
        # Tolerate what real producers emit: line breaks, percent-escaping, url-safe
        # alphabet and missing padding. (Base64 never contains '%', so unquoting is safe.)
        text = re.sub(r"\s+", "", urllib.parse.unquote(payload)).replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageLoadError(
                name or f"data URI ({media}, {_human_size(len(payload))} encoded)", f"invalid base64 payload ({e})"
            ) from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    return _load_bytes(data, name or f"data URI ({media}, {_human_size(len(data))})", limits)


def _file_uri_to_path(uri: str, name: str | None) -> str:
    parsed = urllib.parse.urlparse(uri)
    if parsed.netloc not in ("", "localhost"):
        raise ImageLoadError(name or _shorten(uri), f"file:// URI names a remote host {parsed.netloc!r}; only local files are read")
    return urllib.request.url2pathname(parsed.path)


def _path_hint(path: str) -> str:
    if "://" in path:
        return " (only local paths and file:// URIs are read)"
    if len(path) > 256 and _BASE64ISH.fullmatch(path):
        return " (looks like base64 data: pass a 'data:image/...;base64,' URI or the decoded bytes)"
    return ""


def _array_to_pil(arr: np.ndarray, label: str, limits) -> Image.Image:
    expected = "expected a uint8 array of shape HxW or HxWxC with C in 1..4 (or HxW uint16)"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2 and arr.dtype == np.uint16:
        mode = "I;16"
    elif arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise ImageLoadError(label, f"unsupported array shape/dtype; {expected}")
    else:
        mode = "L" if arr.ndim == 2 else {2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    # Check before building a PIL image: fromarray copies, and 0-size arrays misbehave.
    _check_size((arr.shape[1], arr.shape[0]), label, limits)
    arr = np.ascontiguousarray(arr)
    if mode == "I;16":
        return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.astype("<u2").tobytes())
    return Image.frombytes(mode, (arr.shape[1], arr.shape[0]), arr.tobytes())


# -------------------------------------------------------------------------- decode path


def _decode(fp, label: str, limits) -> Image.Image:
    """Open (header only), check the size, then decode; every failure named."""
    try:
        with _bomb_warning_as_error():
            im = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(label, e) from None
    except Image.UnidentifiedImageError:
        fp.seek(0)
        size = _sniff_size(fp.read(32))
        if size is not None and 0 in size:
            raise ImageLoadError(label, f"zero width or height ({size[0]}x{size[1]}) in the header") from None
        raise ImageLoadError(label, "cannot identify image: not an image, or a corrupt, truncated or unsupported file") from None
    except MemoryError:
        raise
    except Exception as e:  # plugins raise OSError, SyntaxError, ValueError, EOFError, ...
        raise ImageLoadError(label, f"corrupt image header ({type(e).__name__}: {e})") from e
    with im:
        return _finish(im, label, limits)


def _finish(im: Image.Image, label: str, limits) -> Image.Image:
    # Header size first: nothing has been decoded yet for a freshly opened file.
    _check_size(im.size, label, limits)
    try:
        with _bomb_warning_as_error():
            im.load()  # first frame; surfaces truncation/corruption now, not in the processor
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(label, e) from None
    except MemoryError:
        raise
    except Exception as e:
        raise ImageLoadError(label, f"corrupt or truncated image data ({type(e).__name__}: {e})") from e
    _check_size(im.size, label, limits)  # a few formats (ICO, JPEG draft) settle the size on load

    try:
        # Only call exif_transpose when there is something to do: it copies the image.
        if im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            im = ImageOps.exif_transpose(im)  # new image; the caller's is left untouched
    except Exception as e:
        # Malformed EXIF should not cost us a perfectly decodable page: keep it unrotated.
        warnings.warn(f"{label}: ignoring unreadable EXIF orientation ({type(e).__name__}: {e})", stacklevel=3)
    try:
        return _to_rgb(im)
    except Exception as e:
        raise ImageLoadError(label, f"cannot convert mode {im.mode!r} to RGB ({type(e).__name__}: {e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _HIGH_DEPTH_16 or im.mode in ("I", "F"):
        # Transparency of high-depth gray (rare tRNS on 16-bit PNGs) is dropped here.
        im = _high_depth_to_l(im)
    if im.has_transparency_data:  # LA, La, PA, RGBA, RGBa, or P/L/RGB with a tRNS entry
        if im.mode == "La":  # Pillow has no La -> RGBA path
            im = im.convert("LA")
        # White, not black: documents, slides and charts assume a white page, and
        # convert("RGB") would expose whatever colour sits under alpha=0 (often black).
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # P via palette, L/1 replicated, CMYK via Pillow's naive formula (ICC profiles are not
    # applied: fine for text, slightly off for colour-managed photos), YCbCr/LAB/HSV/RGBX.
    return im.convert("RGB")  # returns a copy even for RGB


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer or float grayscale to 8 bits by its full-scale value.

    ``convert("L")`` clips at 255, which turns a 16-bit scan into a white page.
    Full scale: 65535 for I;16*; for mode I the file's declared BitsPerSample (TIFF) if
    any, else 65535 when the values fit in 16 bits (the usual case: 16-bit data widened
    to I), else a min..max stretch; for F, 1.0 if values lie in [0, 1], 255 if in
    [0, 255], else a min..max stretch. Rounded to nearest, so 0 -> 0, full scale -> 255.
    """
    # float32 is exact for 16-bit values; mode I (32-bit ints) needs float64.
    work = np.asarray(im).astype(np.float64 if im.mode == "I" else np.float32)
    if im.mode == "F":
        np.nan_to_num(work, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    if im.mode in _HIGH_DEPTH_16:
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(work.min()), float(work.max())
        bits = _declared_bits(im) if im.mode == "I" else None
        if bits and lo >= 0:
            lo, hi = 0.0, float(2**bits - 1)
        elif im.mode == "I" and lo >= 0 and hi <= 65535:
            lo, hi = 0.0, 65535.0
        elif im.mode == "F" and lo >= 0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        elif im.mode == "F" and lo >= 0 and hi <= 255.0:
            lo, hi = 0.0, 255.0
        # else: min..max stretch (negative or out-of-range values have no standard scale)
    work -= lo
    work *= 255.0 / (hi - lo) if hi > lo else 0.0
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return Image.fromarray(work.astype(np.uint8))


def _declared_bits(im: Image.Image) -> int | None:
    tags = getattr(im, "tag_v2", None)  # TIFF only
    try:
        bits = tags.get(258) if tags is not None else None  # BitsPerSample
        bits = bits[0] if isinstance(bits, tuple) else bits
        return int(bits) if bits and 1 <= int(bits) <= 32 else None
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- checks


def _check_size(size: tuple[int, int], label: str, limits) -> None:
    max_pixels, min_side = limits
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError(label, f"zero width or height ({w}x{h})")
    if min(w, h) < min_side:
        raise ImageLoadError(label, f"too small: {w}x{h}, smaller than min_side={min_side}")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError(
            label,
            f"too large: {w}x{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,} "
            "(decompression-bomb guard; pass a larger max_pixels to allow it)",
        )


class _bomb_warning_as_error(warnings.catch_warnings):
    """Pillow only *warns* between MAX_IMAGE_PIXELS and 2x that; make it an error so it
    is reported as ImageLoadError like everything else. (catch_warnings swaps the global
    filter list, not thread-safe before Python 3.14; worst case under threads is a stray
    warning, never a wrong image.)"""

    def __enter__(self):
        r = super().__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return r


def _bomb_error(label: str, e: Exception) -> ImageLoadError:
    return ImageLoadError(
        label,
        f"exceeds Pillow's decompression-bomb limit (PIL.Image.MAX_IMAGE_PIXELS = "
        f"{Image.MAX_IMAGE_PIXELS:,} pixels): {e}",
    )


def _sniff_size(head: bytes) -> tuple[int, int] | None:
    # Pillow refuses 0-size headers as "cannot identify"; read PNG/GIF sizes ourselves
    # so the common crafted/broken case gets the accurate reason.
    try:
        if head.startswith(_PNG_SIG) and head[12:16] == b"IHDR":
            return struct.unpack(">II", head[16:24])
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", head[6:10])
    except struct.error:
        pass
    return None


# ---------------------------------------------------------------------------- labels


def _describe_pil(im: Image.Image) -> str:
    filename = getattr(im, "filename", None)
    if filename:
        return os.fsdecode(filename)
    return f"PIL image ({im.mode} {im.width}x{im.height})"


def _shorten(text: str, limit: int = 160) -> str:
    # A base64 blob passed without "data:" would otherwise flood the error message.
    return text if len(text) <= limit else f"{text[:100]}...{text[-40:]} ({len(text)} chars)"


def _human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KB"
    return f"{n / 1024**2:.1f} MB"
