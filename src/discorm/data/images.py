"""Images of a conversation: where they may come from, how they are checked and opened.

An image is given as a local path (relative paths are read from the data file's folder, or ``dataset_dir``), a
data URI (``data:image/png;base64,...``), a PIL image (from Python), or an http(s) URL, which is fetched only where
the policy allows it. In message text, each image stands at an ``<image>`` placeholder (LlamaFactory's), in the
order of the row's image list. Every check names the item: a file that is not there or not an image, an image
too large in bytes or pixels, a path outside the operator's ``media_root``, a URL where URLs are not allowed.
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from discorm.errors import DataError

IMAGE_PLACEHOLDER = "<image>"
URL_SCHEMES = ("http://", "https://")


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may be read from and how large they may be.

    ``base_dir``: relative paths are read from here. ``media_root``: when set, a path must resolve inside it (the
    server's ``--media-root``); ``allow_paths=False`` refuses every path (a server without a media root).
    ``allow_urls``: fetch http(s) URLs (off unless an operator turns it on). ``max_pixels`` / ``max_bytes``: the
    largest image accepted, checked before it is decoded."""

    base_dir: str | None = None
    media_root: str | None = None
    allow_paths: bool = True
    allow_urls: bool = False
    max_pixels: int = 4096 * 4096
    max_bytes: int = 20 * 2**20
    url_timeout: float = 10.0


DEFAULT_POLICY = ImagePolicy()


def image_source(ref, where: str, policy: ImagePolicy = DEFAULT_POLICY):
    """A reference -> what a record stores: an absolute path (checked to exist, inside ``media_root`` when set),
    a data URI or URL as given, or a PIL image unchanged. Raises DataError naming ``where``."""
    if isinstance(ref, Image.Image):
        return ref
    if isinstance(ref, dict):  # {"path": ...} / {"url": ...} / {"bytes": ...}, as datasets' Image feature stores it
        if isinstance(ref.get("bytes"), (bytes, bytearray)) and ref["bytes"]:
            return "data:image;base64," + base64.b64encode(ref["bytes"]).decode()
        ref = ref.get("path") or ref.get("url")
    if not isinstance(ref, str) or not ref.strip():
        raise DataError(f"{where}: an image must be a file path, a data URI or a URL, not {str(ref)[:60]!r}.")
    if ref.startswith("data:"):
        return ref
    if ref.startswith(URL_SCHEMES):
        if not policy.allow_urls:
            raise DataError(f"{where}: image URL {ref[:80]!r} is not fetched: URL images are off here. Send the "
                            "image as a data URI (data:image/png;base64,...) instead.")
        return ref
    if not policy.allow_paths:
        raise DataError(f"{where}: image file paths are not accepted here (no media root is set); send the image "
                        "as a data URI (data:image/png;base64,...).")
    try:  # a NUL byte or an unknown ~user is a bad path, not a crash
        path = Path(ref) if policy.media_root is not None else Path(ref).expanduser()
        if not path.is_absolute():
            path = Path(policy.base_dir or ".") / path
        path = path.resolve()
    except (ValueError, RuntimeError, OSError) as err:
        raise DataError(f"{where}: image path {ref[:80]!r} is not a valid path ({err}).") from None
    if policy.media_root is not None:
        root = Path(policy.media_root).resolve()
        if not path.is_relative_to(root):
            raise DataError(f"{where}: image path {ref!r} lies outside the media root; only files under the "
                            "server's --media-root are read.")
    if not path.is_file():  # under a media root the client sees its own path, not where the root lies
        shown = ref if policy.media_root is not None else str(path)
        raise DataError(f"{where}: image file {shown!r} does not exist. Paths are read relative to the data "
                        "file's folder (or dataset_dir); fix the path or add the file.")
    return str(path)


def _raw_bytes(source: str, where: str, policy: ImagePolicy) -> bytes:
    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        if not header.endswith(";base64") or not payload:
            raise DataError(f"{where}: the image data URI is not base64 (expected data:image/png;base64,...).")
        if len(payload) * 3 // 4 > policy.max_bytes:
            raise DataError(f"{where}: the image is larger than {policy.max_bytes} bytes.")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise DataError(f"{where}: the image data URI holds invalid base64 ({err}).") from err
    if source.startswith(URL_SCHEMES):
        try:
            with urllib.request.urlopen(source, timeout=policy.url_timeout) as response:  # noqa: S310 - operator's choice
                data = response.read(policy.max_bytes + 1)
        except OSError as err:
            raise DataError(f"{where}: image URL {source[:80]!r} could not be fetched ({err}).") from err
    else:
        size = Path(source).stat().st_size
        if size > policy.max_bytes:
            raise DataError(f"{where}: image file {source!r} has {size} bytes, more than the {policy.max_bytes} "
                            "accepted.")
        data = Path(source).read_bytes()
    if len(data) > policy.max_bytes:
        raise DataError(f"{where}: the image is larger than {policy.max_bytes} bytes.")
    return data


def load_image(ref, where: str, policy: ImagePolicy = DEFAULT_POLICY) -> Image.Image:
    """A reference (see ``image_source``) -> an RGB PIL image, its size checked before it is decoded."""
    source = image_source(ref, where, policy)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(_raw_bytes(source, where, policy)))
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise DataError(f"{where}: the image cannot be read ({type(err).__name__}: {err}); send a PNG, JPEG, "
                            "WebP or GIF image.") from err
    width, height = image.size
    if width * height > policy.max_pixels:
        raise DataError(f"{where}: the image has {width}x{height} pixels, more than the {policy.max_pixels} "
                        "accepted; resize it.")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as err:  # a truncated file fails only when decoded
        raise DataError(f"{where}: the image cannot be decoded ({type(err).__name__}: {err}).") from err


def data_uri(image: Image.Image) -> str:
    """A PIL image -> a PNG data URI (how an image travels in JSON)."""
    buffer = io.BytesIO()
    (image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def count_placeholders(text: str) -> int:
    return text.count(IMAGE_PLACEHOLDER)
