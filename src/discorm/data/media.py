"""A row's images -> its record's ``meta["images"]``, checked, for every format (``formats.convert`` calls it).

Images belong to the prompt. They come from the row's ``images`` column (LlamaFactory's name; ``image`` in its
``rlaif_v`` rows, or whatever a dataset_info.json entry's ``columns: {"images": ...}`` names), a list of references
or a single one, or from the image parts of the prompt's messages (TRL/OpenAI content parts, read by
``rows.message_content``); one row uses one of the two. The prompt's texts hold one ``<image>`` placeholder per
image, in order; a prompt without any gets them at the start of its first user message (``rlaif_v`` questions
have none). Every image is checked where it is read: a path exists (read from the data file's folder, or
``dataset_dir``, ``FormatSpec.base_dir``) and its header is an image's; a data URI decodes to an image; a URL is
refused (training data is read from local files). Pixels are decoded only when a batch is built
(the collator).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from discorm.data.images import IMAGE_PLACEHOLDER, ImagePolicy, count_placeholders, image_source, load_image
from discorm.data.listwise import Ranked
from discorm.data.pairs import Pair
from discorm.data.ratings import Rated
from discorm.data.rows import PART_IMAGES, FormatSpec, Message, missing
from discorm.errors import DataError

IMAGE_KEYS = ("images", "image")  # the keys of an images column; a dataset_info.json entry may rename either


def _responses(record: Pair | Ranked | Rated, spec: FormatSpec) -> list[tuple[str, list[Message]]]:
    """(column, messages) of each response of a record."""
    if isinstance(record, Pair):
        return [(spec.column("chosen"), record.chosen), (spec.column("rejected"), record.rejected)]
    if isinstance(record, Ranked):
        return [(f"{spec.column('responses')}[{i}]", messages) for i, messages in enumerate(record.responses)]
    return [(spec.column("response"), record.response)]


def _column_refs(row: dict, spec: FormatSpec, where: str) -> tuple[str | None, list]:
    """(the images column the row has, or None; its references, each with where it stands)."""
    names = dict.fromkeys((*(spec.column(key) for key in IMAGE_KEYS), *IMAGE_KEYS))  # mapped first, then as named
    present = [column for column in names if column in row]
    given = [column for column in present if not missing(row[column]) and row[column] not in ("", [], ())]
    if len(given) > 1:
        raise DataError(f"{where}: both columns {given[0]!r} and {given[1]!r} give images; keep one images column.")
    if not given:
        return (present[0] if present else None), []
    column = given[0]
    value = row[column]
    refs = list(value) if isinstance(value, (list, tuple)) else [value]
    return column, [(ref, f"{where}, column {column!r} image {i}") for i, ref in enumerate(refs)]


def _check_readable(source, place: str, policy: ImagePolicy) -> None:
    """A file's header is an image's (PIL reads the header only); a data URI decodes to an image."""
    if isinstance(source, Image.Image) or source.startswith(("http://", "https://")):
        return
    if source.startswith("data:"):
        load_image(source, place, policy)
        return
    size = Path(source).stat().st_size
    if size > policy.max_bytes:
        raise DataError(f"{place}: image file {source!r} has {size} bytes, more than the {policy.max_bytes} "
                        "accepted; resize it.")
    try:
        with Image.open(source) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DataError(f"{place}: image file {source!r} is not a readable image ({type(err).__name__}: {err}); "
                        "give a PNG, JPEG, WebP or GIF file, or drop the row.") from None
    if width * height > policy.max_pixels:
        raise DataError(f"{place}: image file {source!r} has {width}x{height} pixels, more than the "
                        f"{policy.max_pixels} accepted; resize it.")


def attach_images(record: Pair | Ranked | Rated, row: dict, spec: FormatSpec, where: str) -> None:
    """Move the row's images into ``record.meta["images"]`` (image sources, see ``images.image_source``), with one
    ``<image>`` placeholder per image in the prompt; DataError naming the row and the column for an image in a
    response, a placeholder count that differs from the image count, or an image that cannot be read."""
    parts = []
    for message in record.prompt:
        parts += message.pop(PART_IMAGES, [])
    for column, messages in _responses(record, spec):
        for message in messages:
            images = message.pop(PART_IMAGES, None)
            if images:
                raise DataError(f"{images[0][1]}: response {column!r} holds an image; images belong to the prompt. "
                                "Move the image into the prompt's messages (or the images column).")
    column, refs = _column_refs(row, spec, where)
    part_refs = [(ref, place) for ref, place in parts if ref is not None]
    if part_refs and refs:
        raise DataError(f"{where}: images come both from column {column!r} and from content parts ({part_refs[0][1]}); "
                        "give each row's images in one of the two.")
    if column is None and not parts:
        return  # a text row: an "<image>" in its text is text
    refs = refs or part_refs
    for name, messages in _responses(record, spec):
        if any(count_placeholders(m["content"]) for m in messages):
            raise DataError(f"{where}: response {name!r} holds an {IMAGE_PLACEHOLDER} placeholder; images belong "
                            "to the prompt. Move the placeholder (and its image) into the prompt.")
    placeholders = sum(count_placeholders(m["content"]) for m in record.prompt)
    if placeholders == 0 and refs:
        _open_first_user_turn(record.prompt, len(refs), where)
    elif placeholders != len(refs):
        given = f"column {column!r} gives" if column is not None and not part_refs else "the content parts give"
        raise DataError(f"{where}: the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {given} "
                        f"{len(refs)} image(s); give one image per placeholder, in order (or no placeholder: the "
                        "images then open the first user message).")
    policy = ImagePolicy(base_dir=spec.base_dir, allow_urls=False)
    sources = []
    for ref, place in refs:
        source = image_source(ref, place, policy)
        _check_readable(source, place, policy)
        sources.append(source)
    if sources:
        record.meta["images"] = sources


def _open_first_user_turn(prompt: list[Message], count: int, where: str) -> None:
    """Put ``count`` placeholders at the start of the prompt's first user message."""
    for message in prompt:
        if message["role"] == "user":
            message["content"] = IMAGE_PLACEHOLDER * count + message["content"]
            return
    raise DataError(f"{where}: the row gives {count} image(s) but its prompt has no user message to hold them; "
                    "images belong to the prompt.")
