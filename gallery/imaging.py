"""Decoding untrusted image bytes into clean RGB pictures, and thumbnails.

Every path that reads an uploaded file goes through here, so hostile input is handled once:
the pixel count is checked from the header before any pixel is allocated, decoding errors
(truncation, corruption) become an ``ImageRejected`` with a reason a person can read, and
every mode PIL knows (CMYK, 16-bit, palette, alpha) comes out as 8-bit RGB, alpha composited
on white, EXIF orientation applied, first frame of an animation. A picture's embedded colour
profile travels with it (``info["icc_profile"]``) until it is small, then ``to_srgb`` converts it;
a CMYK or grey picture's profile is applied as the picture is converted to RGB.
"""
from __future__ import annotations

import hashlib
import io
import math
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from django.conf import settings
from PIL import Image as PILImage
from PIL import ExifTags, ImageCms, ImageOps, UnidentifiedImageError

# Pillow's own bomb check would fire at its default limit; ours (CBIR_MAX_IMAGE_PIXELS) runs first
# from the header. Warnings are turned into errors below so nothing half-decodes silently.
PILImage.MAX_IMAGE_PIXELS = None
# Every picture on its way to an encoder is reduced to fit this side first (``fit_within``):
# the encoders' inputs are at most 128 px, and the steps after it (padding to a square, the
# resize) then cost the same for any upload, where a 32,576x48 GIF would otherwise be padded
# to a 32,576-pixel square (3.2 GB).
WORKING_SIDE = 256

# The only decoders that ever see uploaded bytes: the formats cameras, phones and the web produce.
# Pillow knows some forty more (PSD, EPS, FITS, ICNS...), parsers that see little use and that
# hostile bytes have no reason to reach: a file in one of them is refused, whatever its name.
# JPEG includes MPO (phone JPEGs with a second picture); PPM includes PGM and PBM. HEIF is an
# iPhone's photo format (HEIC), read by libheif through pillow-heif, which turns the picture
# upright itself (its EXIF orientation then reads 1) and gives 10-bit pictures as 8-bit.
pillow_heif.register_heif_opener()
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "AVIF", "HEIF", "BMP", "TIFF", "PPM")
ACCEPTED_NAMES = "JPEG, PNG, GIF, WebP, AVIF, HEIC, BMP, TIFF and PNM"
# A picture decoded at four or more times the side its caller needs is shrunk by the whole factor
# that leaves at least twice that side (a box filter), before any conversion and a strip of about
# this many pixels at a time. Converted at full size, a 564 KB 16-bit PNG of 8000x8000 took 1.7 GB
# of peak memory and an RGBA one 1.5 GB; shrunk first, 156 MB and 268 MB (`bench/decode_memory.py`,
# docs/benchmarks.md).
STRIP_PIXELS = 1 << 20
# Modes whose values are scaled to 8 bits by the picture's white point (``_peak``).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# EXIF orientation -> the transpose that displays it upright: ImageOps.exif_transpose's table, which
# only transposes the very image it reads the tag from, here the full-size one.
_TRANSPOSE = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}


class ImageRejected(ValueError):
    """The bytes are not an image this service can index; ``str(exc)`` is the reason."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


def _open(data: bytes) -> PILImage.Image:
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image in an accepted format ({ACCEPTED_NAMES})") from None
    except Exception as exc:  # a damaged header raises OSError, SyntaxError, ValueError, RuntimeError (AVIF)...
        raise ImageRejected(f"unreadable image header: {exc}") from None
    width, height = image.size
    limit = settings.CBIR_MAX_IMAGE_PIXELS
    if width < 1 or height < 1:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > limit:
        raise ImageRejected(
            f"image too large: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{limit:,} (CBIR_MAX_IMAGE_PIXELS)"
        )
    return image


def _orientation(image: PILImage.Image) -> int:
    """The EXIF orientation (1-8) among what Pillow has read of ``image`` so far, 1 if none. A
    PNG's eXIf chunk after the pixels is only read with them, so an unloaded PNG without one in
    its header says 1 here; the workers record the size they decode (``decode_rgb``)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a damaged EXIF block: the decoder has the last word on the file
        return 1
    return orientation if orientation in _TRANSPOSE else 1


def _displayed_size(image: PILImage.Image, size: tuple[int, int]) -> tuple[int, int]:
    """``size`` (of the stored pixels) as shown: orientations 5 to 8 turn the picture a quarter, so
    they swap its sides. Pillow already gives a TIFF's size as shown (and turns its pixels as it
    loads them)."""
    if image.format == "TIFF" or _orientation(image) < 5:
        return size
    return size[1], size[0]


def inspect(data: bytes) -> ImageInfo:
    """Cheap check from the header (and PIL's structural verify), without decoding pixels. The
    width and height are the picture's as shown, after its EXIF orientation, as the thumbnail
    and a browser show it."""
    image = _open(data)
    width, height = _displayed_size(image, image.size)
    info = ImageInfo(width=width, height=height, format=image.format or "")
    try:
        image.verify()
    except Exception as exc:  # verify() raises many types for damaged files
        raise ImageRejected(f"corrupt image data: {exc}") from None
    return info


def _peak(image: PILImage.Image) -> float:
    """The value that maps to white in a 16-bit, integer or float picture (from its extrema, which
    allocate nothing)."""
    if image.mode.startswith("I;16"):
        return 65535.0
    return 65535.0 if image.getextrema()[1] > 255 else 255.0


# Modes whose own colour profile ``decode_rgb`` applies as it converts them to RGB, and the mode
# of the profile that fits each: a grey picture with alpha, or of 16 bits, is first made 8-bit
# grey (composited on white, or scaled), then goes through its grey profile.
_PROFILE_MODE = {"CMYK": "CMYK", "L": "L", "LA": "L", "La": "L", **{mode: "L" for mode in _WIDE_MODES}}


def _grey(image: PILImage.Image, *, peak: float | None = None) -> PILImage.Image:
    """A 16-bit, integer, float or alpha grey picture as 8-bit grey (alpha composited on white)."""
    if image.mode in ("LA", "La"):
        grey, alpha = image.convert("LA").split()
        return PILImage.composite(grey, PILImage.new("L", image.size, 255), alpha)
    array = np.asarray(image, dtype=np.float64)
    peak = _peak(image) if peak is None else peak
    return PILImage.fromarray(np.clip(np.rint(array / peak * 255.0), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(
    image: PILImage.Image, *, peak: float | None = None, profile: ImageCms.ImageCmsTransform | None = None
) -> PILImage.Image:
    """``image`` as 8-bit RGB. A CMYK or grey one goes through ``profile`` (its own profile's
    transform to sRGB) when it has one, else through Pillow's formulas: 255 minus the ink, which
    shows inks too bright, and grey values taken as sRGB's."""
    if profile is not None and image.mode in _PROFILE_MODE:
        if image.mode != _PROFILE_MODE[image.mode]:  # grey with alpha, or of 16 bits
            image = _grey(image, peak=peak)
        return ImageCms.applyTransform(image, profile)
    if image.mode in _WIDE_MODES:
        return _grey(image, peak=peak).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _shrunk_rgb(image: PILImage.Image, factor: int, *, profile: ImageCms.ImageCmsTransform | None = None) -> PILImage.Image:
    """``image`` as 8-bit RGB, each ``factor`` x ``factor`` box averaged (``Image.reduce``'s box,
    partial at the right and bottom edges), converted a strip of rows at a time so that no
    full-size converted copy exists. Compositing on white and averaging are both linear, so the
    order does not change the result beyond rounding."""
    width, height = image.size
    peak = _peak(image) if image.mode in _WIDE_MODES else None
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    shrunk = PILImage.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        strip = _to_rgb(image.crop((0, top, width, min(height, top + rows))), peak=peak, profile=profile)
        shrunk.paste(strip.reduce(factor), (0, top // factor))
    return shrunk


def decode_rgb(data: bytes, *, min_side: int | None = None) -> PILImage.Image:
    """Fully decode ``data`` into an 8-bit RGB image (first frame, EXIF-rotated, alpha on white).

    With ``min_side``, JPEGs are decoded at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4, 1/8)
    as long as the longer side stays at least ``min_side``: several times faster for photos
    that only feed a thumbnail and the encoder. Other formats, decoded at full size, are then
    shrunk by the whole factor that keeps the longer side at least ``2 * min_side`` (the factor
    Pillow's own resizing with ``reducing_gap=2`` applies first), before they are converted.
    The picture's full size as shown (before any reduction, after the EXIF orientation) is in
    the result's ``info["full_size"]``.
    """
    image = _open(data)
    try:
        image.seek(0)
        header_size = image.size  # the stored pixels' size, before the JPEG draft reduces it
        if min_side and image.format in ("JPEG", "MPO"):
            width, height = image.size
            scale = min_side / max(width, height)
            if scale < 1:
                image.draft("RGB", (max(1, int(width * scale + 0.999)), max(1, int(height * scale + 0.999))))
        image.load()
        # A CMYK picture's values mean little without its profile (the press and paper it was
        # separated for), and a grey one's profile says how light each value prints (Photoshop's
        # "Dot Gain 20%"): converted through it, the colours come out as a browser shows them.
        icc = image.info.get("icc_profile")
        profile = _srgb_transform(icc, mode=_PROFILE_MODE[image.mode]) if icc and image.mode in _PROFILE_MODE else None
        factor = max(image.size) // (2 * min_side) if min_side else 0
        if factor < 2:
            rgb = _to_rgb(ImageOps.exif_transpose(image), profile=profile)
        else:
            rgb = _shrunk_rgb(image, factor, profile=profile)
            transpose = _TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
            rgb = rgb.transpose(transpose) if transpose is not None else rgb
        rgb.info["full_size"] = _displayed_size(image, header_size)
        # an RGB profile describes the values of an RGB, palette or alpha picture as converted;
        # a CMYK or grey one was applied above, or does not fit (``to_srgb`` would refuse both)
        if icc and image.mode not in _PROFILE_MODE:
            rgb.info["icc_profile"] = icc
        else:
            rgb.info.pop("icc_profile", None)
        return rgb
    except ImageRejected:
        raise
    except Exception as exc:  # truncated/corrupt streams raise OSError, SyntaxError, ValueError...
        raise ImageRejected(f"truncated or corrupt image data: {exc}") from None


_SRGB = ImageCms.createProfile("sRGB")
# Real RGB profiles take 0.5-60 KB (Display P3 536 bytes, sRGB 3 KB), the press profiles of CMYK
# files up to about 2 MB (SWOP 557 KB, ISO Coated v2 1.9 MB, their lookup tables); a JPEG can
# carry one of up to 16 MB. A larger one is not read: RGB and grey values are then taken as
# sRGB's, and CMYK ones go through Pillow's formula.
MAX_PROFILE_BYTES = 4 << 20
# A collection's photos share a few profiles (one per camera or phone model): the transforms
# built for the most recent ones are kept, by a digest of the profile.
_TRANSFORMS: dict[bytes, ImageCms.ImageCmsTransform | None] = {}
_TRANSFORMS_KEPT = 16
_TRANSFORMS_LOCK = threading.Lock()


def _build_srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower().replace(" ", ""):
            return None
        # shared by a worker's decode threads: LittleCMS's one-pixel cache is not thread-safe
        return ImageCms.buildTransform(source, _SRGB, mode, "RGB", flags=ImageCms.Flags.NOCACHE)
    except Exception:  # ImageCms.PyCMSError, OSError: a damaged, hostile or non-RGB profile
        return None


def _srgb_transform(icc: bytes, *, mode: str = "RGB") -> ImageCms.ImageCmsTransform | None:
    """The transform from a ``mode`` (RGB, CMYK or L) picture in the colour space ``icc``
    describes to sRGB, or None when there is nothing to do or nothing sound to do: an RGB profile
    that names itself sRGB, a profile of another kind of space, or one too large or unreadable.
    Then RGB and grey values are taken as sRGB's, as a browser takes them, and CMYK ones go
    through Pillow's formula."""
    if len(icc) > MAX_PROFILE_BYTES:
        return None
    key = hashlib.blake2b(icc, digest_size=16, person=mode.encode()).digest()
    with _TRANSFORMS_LOCK:
        if key in _TRANSFORMS:
            return _TRANSFORMS[key]
    transform = _build_srgb_transform(icc, mode)
    with _TRANSFORMS_LOCK:
        if len(_TRANSFORMS) >= _TRANSFORMS_KEPT:
            del _TRANSFORMS[next(iter(_TRANSFORMS))]  # the oldest
        _TRANSFORMS[key] = transform
    return transform


def to_srgb(image: PILImage.Image, icc: bytes | None) -> PILImage.Image:
    """An RGB picture whose values are in the colour space of the profile ``icc``, in sRGB: what
    a browser shows of the original and what a thumbnail without a profile must hold. A phone's
    Display P3 or a camera's Adobe RGB photo taken as sRGB looks dull. Callers convert a picture
    once it is small, since the cost follows the pixels: the 256 px thumbnail and the encoder's
    input together add 1.1 ms to a 1024x768 photo (`bench/colour_profiles.py`)."""
    transform = _srgb_transform(icc) if icc else None
    return image if transform is None else ImageCms.applyTransform(image, transform)


def decode_for_encoder(data: bytes) -> PILImage.Image:
    """``data`` decoded as every path that embeds a picture decodes it (the workers, training,
    search queries): JPEGs at the reduced scale that still covers the thumbnail and
    ``WORKING_SIDE``. With ``fit_within`` (which ``Preprocess`` applies), one file gives one
    vector whichever path it takes."""
    return decode_rgb(data, min_side=max(settings.CBIR_THUMBNAIL_SIZE, WORKING_SIDE))


# A region of a picture to search with (left, top, right, bottom, as fractions of its width and
# height) must span at least this many of its pixels each way: fewer is a click rather than a box,
# and holds too little for an encoder to say anything about.
Region = tuple[float, float, float, float]
MIN_REGION_SIDE_PX = 8
REGION_FORMAT = (
    "four fractions of the picture, left, top, right and bottom, each from 0 to 1 (0.1,0.2,0.6,0.9), "
    "with left before right and top above bottom"
)


def region_parse(text: str) -> Region:
    """A region written as "left,top,right,bottom". Raises ``ValueError`` (its message says what a
    region is) for anything else."""
    try:
        edges = tuple(float(part) for part in text.split(","))
    except ValueError:
        edges = ()
    if len(edges) != 4 or not all(0 <= edge <= 1 for edge in edges) or edges[0] >= edges[2] or edges[1] >= edges[3]:
        raise ValueError(f"a region is {REGION_FORMAT}")
    return edges


class RegionTooSmall(ImageRejected):
    """A region of a picture too small to search with."""


def region_crop(picture: PILImage.Image, region: Region) -> PILImage.Image:
    """The part of ``picture`` that ``region`` covers. Raises ``RegionTooSmall`` when it spans fewer
    than ``MIN_REGION_SIDE_PX`` of the picture's pixels either way."""
    width, height = picture.size
    left, top, right, bottom = region
    box = (round(left * width), round(top * height), round(right * width), round(bottom * height))
    if min(box[2] - box[0], box[3] - box[1]) < MIN_REGION_SIDE_PX:
        raise RegionTooSmall(
            f"the region is {box[2] - box[0]}×{box[3] - box[1]} pixels of the {width}×{height} picture; "
            f"it must be at least {MIN_REGION_SIDE_PX} pixels each way"
        )
    return picture.crop(box)


def fit_within(image: PILImage.Image, side: int) -> PILImage.Image:
    """``image`` scaled down (bilinear, aspect kept) so that its longer side is ``side``, or
    ``image`` itself when it already fits."""
    width, height = image.size
    if max(width, height) <= side:
        return image
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, PILImage.Resampling.BILINEAR, reducing_gap=2.0)


# A picture's copy signature: the picture at 16x16 in YCbCr, its brightness (Y) at every pixel less
# its mean, its colour (Cb, Cr) averaged on 2x2 cells (as JPEG keeps it) less the neutral grey,
# at unit length: Torralba et al.'s "tiny images" (2008), which found copies by the correlation
# of such miniatures. Two pictures are copies of each other when their signatures' cosine
# similarity is at least ``gallery.selectors.COPY_MIN_SIMILARITY``: rescaled, recompressed, in
# another format, a little brighter or darker. The encoder's vectors are not made for this: they
# whiten away what near-copies share. The binary perceptual hash (pHash) was measured beside it
# and dropped: clip art's symmetric, mostly flat pictures leave many of its bits to chance
# (`bench/copies.py`, docs/benchmarks.md).
SIGNATURE_SIDE = 16
SIGNATURE_DIM = SIGNATURE_SIDE**2 + 2 * (SIGNATURE_SIDE // 2) ** 2  # 384


def copy_signature(picture: PILImage.Image) -> list[float] | None:
    """The copy signature of ``picture`` (RGB, as ``decode_for_encoder`` gives it, in any size),
    ``SIGNATURE_DIM`` floats; None for a picture of one grey (white, black), which has none. Taken
    in sRGB, like the thumbnail."""
    small = picture.resize((SIGNATURE_SIDE, SIGNATURE_SIDE), PILImage.Resampling.LANCZOS, reducing_gap=2.0)
    small = to_srgb(small, picture.info.get("icc_profile")).convert("YCbCr")
    luma, *chroma = (np.asarray(channel, dtype=np.float64) for channel in small.split())
    half = SIGNATURE_SIDE // 2
    parts = [(luma - luma.mean()).ravel()]
    parts += [(channel.reshape(half, 2, half, 2).mean(axis=(1, 3)) - 128).ravel() for channel in chroma]
    signature = np.concatenate(parts)
    length = np.linalg.norm(signature)
    if length < 1e-3:  # a flat grey picture: no direction to compare
        return None
    return (signature / length).tolist()


# Before a copy is deleted as the copy of another picture, the two are compared region by region,
# which the signature's 16x16 average cannot do: clip art drawn alike overall (flags that differ in
# one badge, a face with another mouth) is 0.98 alike there. Both pictures at up to 32x32 in YCbCr
# (no finer than the smaller of the two holds: a 14 px copy has no more to compare), brightness
# less its mean over its spread (so a brighter copy compares equal), colour less the neutral grey;
# the pair's mean difference on each of 8x8 regions, brightness plus half the colour, must stay at
# most COPY_REGION_MAX_DIFFERENCE everywhere. What it keeps and refuses on the shared sets:
# bench/copy_groups.py's removal part (docs/benchmarks.md).
DETAIL_REGIONS = 8
DETAIL_MAX_SIDE = 32
COPY_REGION_MAX_DIFFERENCE = 0.5


def detail_side(smaller_side: int) -> int:
    """The side at which two pictures whose smaller side (of either) is ``smaller_side`` pixels are
    compared by ``copies_alike_everywhere``: a multiple of DETAIL_REGIONS, at most DETAIL_MAX_SIDE."""
    return max(DETAIL_REGIONS, min(DETAIL_MAX_SIDE, smaller_side // DETAIL_REGIONS * DETAIL_REGIONS))


def copy_detail(picture: PILImage.Image, *, side: int = DETAIL_MAX_SIDE) -> np.ndarray:
    """``picture`` (in sRGB, as a thumbnail is) as ``copies_alike_everywhere`` compares it: a
    (3, side, side) array."""
    small = picture.convert("RGB").resize((side, side), PILImage.Resampling.LANCZOS, reducing_gap=2.0)
    luma, blue, red = (np.asarray(channel, dtype=np.float64) for channel in small.convert("YCbCr").split())
    luma = (luma - luma.mean()) / max(luma.std(), 8.0)  # a flat picture's spread is not magnified
    return np.stack([luma, (blue - 128) / 32, (red - 128) / 32]).astype(np.float32)


def copies_alike_everywhere(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether two ``copy_detail`` arrays of one side differ by at most COPY_REGION_MAX_DIFFERENCE
    on every one of DETAIL_REGIONS x DETAIL_REGIONS regions."""
    difference = np.abs(first - second)
    difference = difference[0] + 0.5 * (difference[1] + difference[2])
    region = difference.shape[0] // DETAIL_REGIONS
    worst = difference.reshape(DETAIL_REGIONS, region, DETAIL_REGIONS, region).mean(axis=(1, 3)).max()
    return float(worst) <= COPY_REGION_MAX_DIFFERENCE


def thumbnail_webp(image: PILImage.Image, *, size: int) -> bytes:
    """A WebP thumbnail in sRGB (converted from the picture's profile, if it has one)."""
    thumb = image.copy()
    thumb.thumbnail((size, size), PILImage.Resampling.LANCZOS)
    thumb = to_srgb(thumb, image.info.get("icc_profile"))
    buffer = io.BytesIO()
    # method=0: the fastest encoder setting; 1.25 ms instead of 4.09 ms at method=4 for a 256 px
    # thumbnail (`bench/ingest.py --stages`, 2-core CPU, 2026-11-22).
    thumb.save(buffer, format="WEBP", quality=80, method=0)
    return buffer.getvalue()
