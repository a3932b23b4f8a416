"""Image references: paths, data URIs, PIL images, and every refusal naming the item."""

import base64
import io

import pytest
from PIL import Image

from discorm.data.images import ImagePolicy, image_source, load_image
from discorm.errors import DataError


def _png(size=(8, 6), colour=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_relative_path_a_data_uri_and_a_pil_image_open_alike(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    pil = Image.new("RGB", (8, 6), (200, 10, 10))
    policy = ImagePolicy(base_dir=str(tmp_path))
    for ref in ("a.png", uri, pil, {"bytes": _png()}, {"path": "a.png"}):
        image = load_image(ref, "row 1", policy)
        assert image.size == (8, 6) and image.getpixel((0, 0)) == (200, 10, 10)
    assert image_source("a.png", "row 1", policy) == str((tmp_path / "a.png").resolve())


@pytest.mark.parametrize("ref, policy, message", [
    ("missing.png", ImagePolicy(), "does not exist"),
    ("../secret.png", ImagePolicy(media_root="ROOT"), "outside the media root"),
    ("/etc/passwd", ImagePolicy(media_root="ROOT"), "outside the media root"),
    ("pic.png", ImagePolicy(allow_paths=False), "not accepted here"),
    ("https://example.com/a.png", ImagePolicy(), "not fetched"),
    ("data:image/png;base64,@@@", ImagePolicy(), "invalid base64"),
    ("data:image/png,abc", ImagePolicy(), "not base64"),
    ("notes.txt", ImagePolicy(), "cannot be read"),
    ("big.png", ImagePolicy(max_pixels=100), "more than the 100"),
    ("big.png", ImagePolicy(max_bytes=10), "more than the 10"),
    (42, ImagePolicy(), "not '42'"),
    ({"bytes": "abc"}, ImagePolicy(), "not 'None'"),
    ("bad\x00name.png", ImagePolicy(), "not a valid path"),
    ("~no-such-user-here/x.png", ImagePolicy(), "not a valid path|does not exist"),
    ("gone.png", ImagePolicy(media_root="ROOT"), "'gone.png' does not exist"),
])
def test_bad_images_are_refused_naming_the_item(tmp_path, ref, policy, message):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(_png())
    (root / "pic.png").write_bytes(_png())
    (root / "notes.txt").write_text("not an image")
    (root / "big.png").write_bytes(_png((40, 40)))
    media_root = str(root) if policy.media_root else None
    policy = ImagePolicy(base_dir=str(root), media_root=media_root, allow_paths=policy.allow_paths,
                         max_pixels=policy.max_pixels, max_bytes=policy.max_bytes)
    with pytest.raises(DataError, match=message) as caught:
        load_image(ref, "data.jsonl:3 images[0]", policy)
    assert "data.jsonl:3 images[0]" in str(caught.value)


def test_a_truncated_file_is_refused_not_raised(tmp_path):
    (tmp_path / "cut.png").write_bytes(_png((64, 64))[:60])
    with pytest.raises(DataError, match="row 2"):
        load_image("cut.png", "row 2", ImagePolicy(base_dir=str(tmp_path)))


def test_under_a_media_root_a_missing_file_does_not_reveal_where_the_root_lies(tmp_path):
    with pytest.raises(DataError) as caught:
        load_image("gone.png", "item 0", ImagePolicy(base_dir=str(tmp_path), media_root=str(tmp_path)))
    assert str(tmp_path) not in str(caught.value)
