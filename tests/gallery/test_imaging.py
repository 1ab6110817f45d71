import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageChops

from gallery import imaging
from tests.utils import (
    image_bytes, ink_swapping_cmyk_profile, linear_grey_profile, orientation_exif, png_with_orientation_after_the_pixels, swapped_primaries_profile,
)
from workers.autoencoder.preprocessing import Preprocess


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but which carries almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_rgb_png_decodes_to_the_same_pixels():
    picture = imaging.decode_rgb(image_bytes(color=(10, 200, 30), size=(20, 10)))
    assert picture.mode == "RGB"
    assert picture.size == (20, 10)
    assert picture.getpixel((5, 5)) == (10, 200, 30)


def test_empty_file_is_rejected_with_reason():
    with pytest.raises(imaging.ImageRejected, match="empty file"):
        imaging.inspect(b"")


def test_text_file_is_not_an_image():
    with pytest.raises(imaging.ImageRejected, match="not an image"):
        imaging.decode_rgb(b"hello, this is plainly text and not a picture")


def test_truncated_jpeg_is_rejected():
    data = image_bytes(size=(256, 256), fmt="JPEG", pattern=1)
    with pytest.raises(imaging.ImageRejected, match="truncated or corrupt"):
        imaging.decode_rgb(data[: len(data) // 2])


def test_huge_declared_dimensions_refused_before_decoding(settings):
    settings.CBIR_MAX_IMAGE_PIXELS = 64_000_000
    bomb = _png_header_only(100_000, 100_000)  # 10^10 pixels declared, ~60 bytes on disk
    with pytest.raises(imaging.ImageRejected, match="image too large: 100000x100000"):
        imaging.decode_rgb(bomb)
    with pytest.raises(imaging.ImageRejected, match="CBIR_MAX_IMAGE_PIXELS"):
        imaging.inspect(bomb)


def test_pixel_limit_is_configurable(settings):
    settings.CBIR_MAX_IMAGE_PIXELS = 100
    with pytest.raises(imaging.ImageRejected, match="exceeds the limit of 100"):
        imaging.inspect(image_bytes(size=(20, 20)))


def test_rgba_alpha_is_composited_on_white():
    image = PILImage.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    picture = imaging.decode_rgb(buffer.getvalue())
    assert picture.getpixel((1, 1)) == (255, 255, 255)
    assert picture.getpixel((0, 0)) == (0, 0, 255)


def test_la_and_palette_with_transparency():
    la = PILImage.new("LA", (3, 3), (0, 0))
    buffer = io.BytesIO()
    la.save(buffer, format="PNG")
    assert imaging.decode_rgb(buffer.getvalue()).getpixel((1, 1)) == (255, 255, 255)

    palette = PILImage.new("P", (3, 3), 1)
    palette.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    assert imaging.decode_rgb(buffer.getvalue()).getpixel((1, 1)) == (0, 128, 0)


def test_cmyk_jpeg_becomes_rgb():
    picture = imaging.decode_rgb(image_bytes(color=(0, 0, 255), mode="CMYK", fmt="JPEG", quality=95))
    red, green, blue = picture.getpixel((10, 10))
    assert picture.mode == "RGB" and blue > 200 and red < 40 and green < 40


def test_16_bit_grayscale_is_scaled_not_clipped():
    image = PILImage.new("I;16", (4, 4), 32768)  # mid-grey in 16 bits
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert imaging.decode_rgb(buffer.getvalue()).getpixel((0, 0)) == (128, 128, 128)


def test_animated_gif_uses_first_frame():
    frames = [PILImage.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    red, green, blue = imaging.decode_rgb(buffer.getvalue()).getpixel((4, 4))
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied():
    data = image_bytes(size=(40, 20), fmt="JPEG", exif=orientation_exif(6))  # "rotate 90 CW to display"
    assert imaging.decode_rgb(data).size == (20, 40)


def _with_orientation(image: PILImage.Image, fmt: str, orientation: int, **save) -> bytes:
    return _encoded(image, fmt, exif=orientation_exif(orientation), **save)


@pytest.mark.parametrize("orientation, shown", [(1, (60, 40)), (3, (60, 40)), (6, (40, 60)), (8, (40, 60)), (5, (40, 60))])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF"])
def test_the_size_is_the_picture_as_shown_after_its_exif_orientation(fmt, orientation, shown):
    data = _with_orientation(PILImage.new("RGB", (60, 40), (200, 30, 30)), fmt, orientation)
    assert (imaging.inspect(data).width, imaging.inspect(data).height) == shown
    picture = imaging.decode_rgb(data)
    assert picture.size == shown and picture.info["full_size"] == shown


def test_the_full_size_is_the_stored_pictures_when_decoding_reduces_it():
    photo = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1600, 3), dtype=np.uint8), "RGB")
    jpeg = imaging.decode_for_encoder(_with_orientation(photo, "JPEG", 6))  # drafted at 1/4
    assert jpeg.size == (300, 400) and jpeg.info["full_size"] == (1200, 1600)
    png = imaging.decode_for_encoder(_with_orientation(photo, "PNG", 8, compress_level=1))  # shrunk by 3
    assert png.size == (400, 534) and png.info["full_size"] == (1200, 1600)


def test_a_png_orientation_after_its_pixels_is_seen_by_the_decoder():
    data = png_with_orientation_after_the_pixels(size=(60, 40), orientation=6)
    assert (imaging.inspect(data).width, imaging.inspect(data).height) == (60, 40)  # the header cannot tell
    picture = imaging.decode_rgb(data)
    assert picture.size == (40, 60) and picture.info["full_size"] == (40, 60)


def test_thumbnail_is_webp_within_size():
    data = imaging.thumbnail_webp(imaging.decode_rgb(image_bytes(size=(1000, 500))), size=256)
    thumb = PILImage.open(io.BytesIO(data))
    assert thumb.format == "WEBP" and thumb.size == (256, 128)


def test_avif_decodes_like_the_other_accepted_formats():
    data = image_bytes(color=(10, 200, 30), size=(40, 30), fmt="AVIF", quality=100)
    assert imaging.inspect(data).format == "AVIF"
    picture = imaging.decode_rgb(data)
    assert picture.size == (40, 30)
    assert all(abs(a - b) <= 8 for a, b in zip(picture.getpixel((20, 15)), (10, 200, 30)))


def test_heic_decodes_like_the_other_accepted_formats():
    data = image_bytes(color=(10, 200, 30), size=(40, 30), fmt="HEIF", quality=95)
    assert imaging.inspect(data).format == "HEIF"
    picture = imaging.decode_for_encoder(data)
    assert picture.size == (40, 30) and picture.info["full_size"] == (40, 30)
    assert all(abs(a - b) <= 12 for a, b in zip(picture.getpixel((20, 15)), (10, 200, 30)))


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_truncated_heic_is_rejected_with_a_reason(cut):
    data = image_bytes(size=(64, 48), fmt="HEIF", pattern=1)
    truncated = data[: int(len(data) * cut)]
    with pytest.raises(imaging.ImageRejected, match="unreadable image header|truncated or corrupt|corrupt image data"):
        imaging.inspect(truncated)  # at upload
        imaging.decode_rgb(truncated)  # in the worker, had the header looked whole


def test_a_heic_over_the_pixel_limit_is_refused_before_decoding(settings):
    settings.CBIR_MAX_IMAGE_PIXELS = 100
    with pytest.raises(imaging.ImageRejected, match="exceeds the limit of 100"):
        imaging.inspect(image_bytes(size=(20, 20), fmt="HEIF"))


def test_an_avif_naming_an_image_it_does_not_hold_is_rejected_not_raised():
    """libavif reports this damage as a RuntimeError, which once went past the header check."""
    data = bytearray(image_bytes(size=(40, 30), fmt="AVIF"))
    primary = data.find(b"pitm")
    data[primary + 9] = 7  # the primary item's id: no item 7 exists
    with pytest.raises(imaging.ImageRejected, match="unreadable image header"):
        imaging.inspect(bytes(data))


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "SGI", "TGA", "QOI", "DDS", "JPEG2000", "EPS", "XBM"])
def test_formats_outside_the_accepted_ones_are_refused_whatever_the_name(fmt):
    """Pillow could read these, but its parsers for them never see uploaded bytes."""
    data = image_bytes(size=(40, 30), fmt=fmt, mode="1" if fmt == "XBM" else "RGB")
    assert PILImage.open(io.BytesIO(data)).format == fmt  # a real file of that format
    for read in (imaging.inspect, imaging.decode_rgb):
        with pytest.raises(imaging.ImageRejected, match=r"not an image in an accepted format \(JPEG, PNG, GIF, WebP, AVIF"):
            read(data)


def test_fit_within_keeps_the_aspect_and_leaves_small_pictures_alone():
    small = PILImage.new("RGB", (200, 100))
    assert imaging.fit_within(small, 256) is small
    assert imaging.fit_within(PILImage.new("RGB", (1200, 900)), 256).size == (256, 192)
    assert imaging.fit_within(PILImage.new("RGB", (32576, 48)), 256).size == (256, 1)


def _encoded(picture: PILImage.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _largest_difference(a: PILImage.Image, b: PILImage.Image) -> int:
    assert a.size == b.size
    return max(high for _, high in ImageChops.difference(a, b).getextrema())


def _half_transparent_rgba(size: tuple[int, int]) -> PILImage.Image:
    """Opaque red on the left, a half-transparent blue band, fully transparent on the right."""
    width, height = size
    picture = PILImage.new("RGBA", size, (0, 0, 0, 0))
    picture.paste((200, 20, 20, 255), (0, 0, width // 3, height))
    picture.paste((20, 20, 200, 128), (width // 3, 0, 2 * width // 3, height))
    return picture


def test_a_large_picture_is_shrunk_before_it_is_converted(monkeypatch):
    """A 2,400 x 1,800 RGBA PNG feeds a 256 px encoder and thumbnail: it is averaged 4 x 4 into
    600 x 450 (still at least twice the side needed) and never converted at full size; the
    result is the full-size conversion, box-averaged."""
    original = _half_transparent_rgba((2400, 1800))
    converted = []
    to_rgb = imaging._to_rgb
    monkeypatch.setattr(imaging, "_to_rgb", lambda image, **kw: converted.append(image.size) or to_rgb(image, **kw))
    picture = imaging.decode_for_encoder(_encoded(original, "PNG"))
    assert picture.mode == "RGB" and picture.size == (600, 450)
    assert max(width * height for width, height in converted) <= 2 * imaging.STRIP_PIXELS
    assert _largest_difference(picture, to_rgb(original).reduce(4)) <= 1
    assert picture.getpixel((590, 200)) == (255, 255, 255)  # transparent: white


def test_a_shrunk_picture_keeps_one_white_point_for_all_its_strips():
    """A 32-bit integer TIFF is scaled by its brightest value over the whole picture, not strip
    by strip: the dark top must not come out as bright as if it were the whole picture."""
    values = np.full((2400, 1200), 200, dtype=np.int32)
    values[1200:] = 50000
    picture = imaging.decode_for_encoder(_encoded(PILImage.fromarray(values, mode="I"), "TIFF"))
    assert picture.size == (300, 600)
    assert picture.getpixel((150, 10)) == (1, 1, 1)  # 200 / 65535 of white
    assert picture.getpixel((150, 590)) == (195, 195, 195)


def test_a_shrunk_picture_still_follows_its_exif_orientation():
    original = _half_transparent_rgba((2400, 1200))
    picture = imaging.decode_for_encoder(_with_orientation(original, "PNG", 6))  # rotate 90 degrees clockwise to display
    assert picture.size == (300, 600)
    reference = imaging._to_rgb(original.transpose(PILImage.Transpose.ROTATE_270)).reduce(4)
    assert _largest_difference(picture, reference) <= 1


def test_shrinking_first_gives_the_encoder_the_same_pixels_when_the_side_divides():
    """Pillow's own resize (``reducing_gap=2``) box-averages by the same factor first, so for a
    side that the factor divides the encoder's input is unchanged to the pixel: vectors stored
    before shrinking was added still match a query with the same file."""
    noise = np.random.default_rng(0).integers(0, 256, (1536, 2048, 3), dtype=np.uint8)
    data = _encoded(PILImage.fromarray(noise, "RGB"), "PNG", compress_level=1)
    full_size = imaging._to_rgb(PILImage.open(io.BytesIO(data)))
    picture = imaging.decode_for_encoder(data)
    assert picture.size == (512, 384)
    expected = imaging.fit_within(full_size, imaging.WORKING_SIDE)
    assert _largest_difference(imaging.fit_within(picture, imaging.WORKING_SIDE), expected) == 0


def test_a_picture_with_a_colour_profile_is_shown_and_embedded_in_srgb():
    """A browser shows the original through its profile; the thumbnail (no profile) and the
    encoder's input must hold the same colours in sRGB."""
    data = image_bytes(color=(255, 0, 0), size=(600, 400), fmt="JPEG", quality=95, icc_profile=swapped_primaries_profile())
    picture = imaging.decode_for_encoder(data)
    assert picture.info["icc_profile"] == swapped_primaries_profile()  # kept until the picture is small
    thumbnail = PILImage.open(io.BytesIO(imaging.thumbnail_webp(picture, size=256)))
    assert "icc_profile" not in thumbnail.info
    red, green, blue = thumbnail.convert("RGB").getpixel((128, 85))
    assert green > 220 and red < 40 and blue < 40
    pixels = Preprocess(32).to_uint8(imaging.fit_within(picture, imaging.WORKING_SIDE))
    red, green, blue = pixels[:, 16, 16]
    assert green > 220 and red < 40 and blue < 40
    oversized = swapped_primaries_profile() + bytes(imaging.MAX_PROFILE_BYTES)
    assert imaging.to_srgb(picture, oversized) is picture  # not read: taken as sRGB


@pytest.mark.parametrize("profile", [b"", b"not a profile" * 40, "srgb"], ids=["empty", "damaged", "srgb"])
def test_a_picture_without_a_usable_profile_keeps_its_values(profile):
    if profile == "srgb":
        from PIL import ImageCms

        profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = image_bytes(color=(200, 30, 30), size=(60, 40), fmt="PNG", icc_profile=profile)
    picture = imaging.decode_rgb(data)
    assert picture.getpixel((30, 20)) == (200, 30, 30)
    assert imaging.to_srgb(picture, picture.info.get("icc_profile")) is picture
    assert tuple(Preprocess(32).to_uint8(picture)[:, 16, 16]) == (200, 30, 30)


@pytest.mark.parametrize(
    "fmt, size, min_side",
    [("JPEG", (60, 40), None), ("JPEG", (1600, 1200), 256), ("TIFF", (1100, 800), 256)],
    ids=["whole", "jpeg-draft", "tiff-shrunk-in-strips"],
)
def test_a_cmyk_picture_is_converted_through_its_own_profile(fmt, size, min_side):
    """Pure cyan ink (sRGB cyan converted by Pillow) of a press whose cyan prints as magenta (the
    test profile) shows magenta, as a browser shows it; Pillow's formula alone gives cyan back."""
    tagged = image_bytes(color=(0, 255, 255), size=size, mode="CMYK", fmt=fmt, icc_profile=ink_swapping_cmyk_profile())
    picture = imaging.decode_rgb(tagged, min_side=min_side)
    red, green, blue = picture.getpixel((picture.width // 2, picture.height // 2))
    assert red > 220 and green < 40 and blue > 220
    assert "icc_profile" not in picture.info  # applied: the values are sRGB now
    untagged = imaging.decode_rgb(image_bytes(color=(0, 255, 255), size=size, mode="CMYK", fmt=fmt), min_side=min_side)
    red, green, blue = untagged.getpixel((untagged.width // 2, untagged.height // 2))
    assert red < 40 and green > 220 and blue > 220


@pytest.mark.parametrize("profile", [b"not a profile" * 40, "rgb"], ids=["damaged", "an-rgb-profile"])
def test_a_cmyk_picture_with_a_profile_that_does_not_fit_goes_through_the_formula(profile):
    profile = swapped_primaries_profile() if profile == "rgb" else profile
    picture = imaging.decode_rgb(image_bytes(color=(0, 255, 255), size=(60, 40), mode="CMYK", fmt="JPEG", icc_profile=profile))
    red, green, blue = picture.getpixel((30, 20))
    assert red < 40 and green > 220 and blue > 220


@pytest.mark.parametrize(
    "fmt, size, min_side",
    [("PNG", (60, 40), None), ("JPEG", (1600, 1200), 256), ("PNG", (1100, 800), 256)],
    ids=["whole", "jpeg-draft", "png-shrunk-in-strips"],
)
def test_a_grey_picture_is_converted_through_its_own_profile(fmt, size, min_side):
    """Mid grey in a linear-light grey space is lighter in sRGB, as a browser shows it."""
    tagged = image_bytes(color=(128, 128, 128), size=size, mode="L", fmt=fmt, icc_profile=linear_grey_profile())
    picture = imaging.decode_rgb(tagged, min_side=min_side)
    assert picture.mode == "RGB" and "icc_profile" not in picture.info
    assert all(abs(channel - 188) <= 3 for channel in picture.getpixel((picture.width // 2, picture.height // 2)))
    untagged = imaging.decode_rgb(image_bytes(color=(128, 128, 128), size=size, mode="L", fmt=fmt), min_side=min_side)
    assert all(abs(channel - 128) <= 3 for channel in untagged.getpixel((untagged.width // 2, untagged.height // 2)))


def _grey_png(mode: str, size: tuple[int, int], **save) -> bytes:
    """Mid grey as a 16-bit grey PNG, or as grey with alpha whose left half is transparent."""
    width, height = size
    if mode == "I;16":
        image = PILImage.fromarray(np.full((height, width), 128 * 257, dtype=np.uint16))
    else:
        alpha = np.full((height, width), 255, dtype=np.uint8)
        alpha[:, : width // 2] = 0
        image = PILImage.merge("LA", (PILImage.new("L", size, 128), PILImage.fromarray(alpha)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("min_side", [None, 256], ids=["whole", "shrunk-in-strips"])
@pytest.mark.parametrize("mode", ["LA", "I;16"])
def test_a_grey_picture_with_alpha_or_16_bits_is_converted_through_its_own_profile(mode, min_side):
    """As an 8-bit grey one: mid grey in a linear-light grey space shows lighter in sRGB, and
    transparent pixels stay white."""
    size = (1100, 800) if min_side else (60, 40)
    tagged = imaging.decode_rgb(_grey_png(mode, size, icc_profile=linear_grey_profile()), min_side=min_side)
    untagged = imaging.decode_rgb(_grey_png(mode, size), min_side=min_side)
    assert tagged.mode == "RGB" and "icc_profile" not in tagged.info
    right = (tagged.width * 3 // 4, tagged.height // 2)
    assert all(abs(channel - 188) <= 3 for channel in tagged.getpixel(right))
    assert all(abs(channel - 128) <= 3 for channel in untagged.getpixel(right))
    if mode == "LA":
        assert tagged.getpixel((tagged.width // 4, tagged.height // 2)) == (255, 255, 255)


def test_a_grey_or_cmyk_picture_does_not_pass_its_profile_on():
    """Their profiles do not describe the RGB values the decoder makes of them."""
    profile = swapped_primaries_profile()
    for mode, fmt in (("L", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG")):
        picture = imaging.decode_rgb(image_bytes(size=(60, 40), mode=mode, fmt=fmt, icc_profile=profile))
        assert "icc_profile" not in picture.info


def _picture(data: bytes):
    return imaging.decode_for_encoder(data)


def _similarity(first, second) -> float:
    return float(np.dot(first, second))


def test_a_copy_signature_is_a_unit_vector_and_none_for_a_flat_grey_picture():
    signature = imaging.copy_signature(_picture(image_bytes(pattern=1, size=(120, 90))))
    assert len(signature) == imaging.SIGNATURE_DIM and abs(np.linalg.norm(signature) - 1) < 1e-6
    assert imaging.copy_signature(_picture(image_bytes(color=(255, 255, 255)))) is None
    assert imaging.copy_signature(_picture(image_bytes(color=(128, 128, 128)))) is None
    assert imaging.copy_signature(_picture(image_bytes(color=(200, 30, 30)))) is not None  # a colour, not grey


@pytest.mark.parametrize("copy", ["smaller JPEG", "larger WebP", "darker"])
def test_a_rescaled_recompressed_or_darker_copy_keeps_its_signature_and_another_picture_does_not(copy):
    from gallery.selectors import COPY_MIN_SIMILARITY

    original = PILImage.open(io.BytesIO(image_bytes(pattern=3, size=(320, 240)))).convert("RGB")
    buffer = io.BytesIO()
    if copy == "smaller JPEG":
        original.resize((160, 120), PILImage.Resampling.BICUBIC).save(buffer, format="JPEG", quality=60)
    elif copy == "larger WebP":
        original.resize((480, 360), PILImage.Resampling.BICUBIC).save(buffer, format="WEBP", quality=70)
    else:
        PILImage.eval(original, lambda value: int(value * 0.85)).save(buffer, format="PNG")
    signature = imaging.copy_signature(_picture(image_bytes(pattern=3, size=(320, 240))))
    assert _similarity(signature, imaging.copy_signature(_picture(buffer.getvalue()))) >= COPY_MIN_SIMILARITY
    other = imaging.copy_signature(_picture(image_bytes(pattern=4, size=(320, 240))))
    assert _similarity(signature, other) < COPY_MIN_SIMILARITY


def test_the_same_picture_in_another_colour_is_not_a_copy():
    from gallery.selectors import COPY_MIN_SIMILARITY

    red = imaging.copy_signature(_picture(image_bytes(color=(200, 30, 30), pattern=5, size=(160, 120))))
    blue = imaging.copy_signature(_picture(image_bytes(color=(30, 30, 200), pattern=5, size=(160, 120))))
    assert _similarity(red, blue) < COPY_MIN_SIMILARITY


def test_pictures_are_compared_region_by_region_no_finer_than_the_smaller_holds():
    assert [imaging.detail_side(side) for side in (3, 14, 28, 31, 32, 4000)] == [8, 8, 24, 24, 32, 32]
    picture = _picture(image_bytes(pattern=4, size=(256, 192)))
    darker = PILImage.eval(picture, lambda value: round(value * 0.85))
    marked = picture.copy()
    marked.paste((255, 255, 0), (200, 150, 232, 182))  # a yellow square on an eighth of each side
    detail = imaging.copy_detail(picture)
    assert detail.shape == (3, 32, 32) and imaging.copy_detail(picture, side=8).shape == (3, 8, 8)
    assert imaging.copies_alike_everywhere(detail, imaging.copy_detail(darker))  # brightness is compared relative to the picture's
    assert not imaging.copies_alike_everywhere(detail, imaging.copy_detail(marked))
