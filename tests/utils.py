"""Images made in the test, with PIL (no datasets, no fixtures on disk)."""
from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image as PILImage


def image_bytes(*, color=(200, 30, 30), size=(64, 48), mode="RGB", fmt="PNG", pattern: int | None = None, **save) -> bytes:
    """A picture of ``color``; ``pattern`` adds a seeded random texture so pictures differ."""
    image = PILImage.new("RGB", size, color)
    if pattern is not None:
        rng = np.random.default_rng(pattern)
        array = np.asarray(image, dtype=np.int16) + rng.integers(-60, 60, size=(size[1], size[0], 3))
        blocks = rng.integers(0, 2, size=(4, 4)).repeat(size[1] // 4 + 1, 0).repeat(size[0] // 4 + 1, 1)
        array[blocks[: size[1], : size[0]] == 1] //= 2
        image = PILImage.fromarray(np.clip(array, 0, 255).astype(np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def side_by_side(*pictures: bytes) -> bytes:
    """One PNG holding ``pictures`` (encoded images of one height) left to right."""
    opened = [PILImage.open(io.BytesIO(data)).convert("RGB") for data in pictures]
    joined = PILImage.new("RGB", (sum(p.width for p in opened), max(p.height for p in opened)), "white")
    left = 0
    for picture in opened:
        joined.paste(picture, (left, 0))
        left += picture.width
    buffer = io.BytesIO()
    joined.save(buffer, format="PNG")
    return buffer.getvalue()


def orientation_exif(orientation: int) -> bytes:
    """An EXIF block holding only an orientation (1-8), for ``image_bytes(..., exif=...)``."""
    exif = PILImage.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def png_with_orientation_after_the_pixels(*, size=(60, 40), orientation: int = 6) -> bytes:
    """A PNG whose eXIf chunk (EXIF orientation ``orientation``) follows its pixels, as the spec
    allows (Pillow writes it before them): the header alone cannot tell how the picture turns."""
    payload = orientation_exif(orientation)[6:]  # the chunk holds the TIFF structure without the b"Exif\0\0" prefix
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    data = image_bytes(size=size)
    return data[:-12] + chunk + data[-12:]  # before the IEND chunk (12 bytes)


@functools.cache  # one profile for the run: Pillow stamps each one it builds with the time, to the second
def swapped_primaries_profile() -> bytes:
    """An ICC profile of an RGB space whose red and green primaries are sRGB's green and red
    (sRGB's own profile, as Pillow builds it, with the two tags' places exchanged and a name of
    its own): a picture tagged with it and stored as pure red shows pure green."""
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {}
    for entry in range(struct.unpack_from(">I", profile, 128)[0]):
        signature, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * entry)
        tags[signature] = (132 + 12 * entry, offset, size)
    (red_at, *red), (green_at, *green) = tags[b"rXYZ"], tags[b"gXYZ"]
    struct.pack_into(">4sII", profile, red_at, b"rXYZ", *green)
    struct.pack_into(">4sII", profile, green_at, b"gXYZ", *red)
    name = "sRGB built-in".encode("utf-16-be")
    return bytes(profile).replace(name, "Swapped R & G".encode("utf-16-be"))


def database_url() -> str:
    """DATABASE_URL for the test database (the embedded server listens on a unix socket), for
    processes the tests start."""
    from django.db import connection

    params = connection.settings_dict
    host = params["HOST"] or params["OPTIONS"].get("host", "")
    return f"postgres://{params['USER']}:{params['PASSWORD']}@/{params['NAME']}?host={host}"


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _icc_profile(device_class: bytes, space: bytes, name: str, tags: list[tuple[bytes, bytes]]) -> bytes:
    """An ICC v2 profile (PCS XYZ, D50) of ``space`` with a description, a white point, a
    copyright and ``tags``."""
    text = name.encode() + b"\0"
    tags = [
        (b"desc", b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
        (b"wtpt", b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)),
        (b"cprt", b"text" + bytes(4) + b"none\0"),
        *tags,
    ]
    directory, data = b"", b""
    start = 128 + 4 + 12 * len(tags)
    for signature, body in tags:
        data += bytes(-(start + len(data)) % 4)
        directory += signature + struct.pack(">II", start + len(data), len(body))
        data += body
    body = struct.pack(">I", len(tags)) + directory + data
    header = (struct.pack(">I", 128 + len(body)) + b"lcms" + bytes([2, 0x10, 0, 0]) + device_class + space + b"XYZ "
              + bytes(12) + b"acspAPPL" + bytes(28) + _s15(0.9642) + _s15(1.0) + _s15(0.8249))
    return header + bytes(128 - len(header)) + body


def ink_swapping_cmyk_profile() -> bytes:
    """An ICC v2 CMYK profile (a 2-point lookup table per ink, CMYK to XYZ) whose cyan ink prints
    as sRGB's magenta and whose magenta ink prints as cyan: a picture tagged with it and stored as
    pure cyan shows magenta, where Pillow's formula without it gives cyan."""
    import itertools

    srgb_to_xyz_d50 = np.array([[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]])
    table = bytearray()
    for cyan, magenta, yellow, black in itertools.product((0, 1), repeat=4):  # the first ink varies slowest
        rgb = np.array([1 - magenta, 1 - cyan, 1 - yellow], dtype=float) * (1 - black)  # sRGB, linear at 0 and 1
        for value in srgb_to_xyz_d50 @ rgb:
            table += struct.pack(">H", round(value / 2 * 65535))  # lut16's XYZ: 0..2 over 0..65535
    identity = struct.pack(">HH", 0, 65535)
    a2b0 = (b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
            + struct.pack(">HH", 2, 2) + identity * 4 + bytes(table) + identity * 3)
    return _icc_profile(b"prtr", b"CMYK", "Swapped C & M", [(b"A2B0", a2b0)])


def linear_grey_profile() -> bytes:
    """An ICC v2 grey profile whose values are linear in light (gamma 1.0): a mid grey of 128
    tagged with it is as light as sRGB's 188."""
    return _icc_profile(b"mntr", b"GRAY", "Linear grey", [(b"kTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 256))])


def vector(*hot: tuple[int, float], dim: int = 256) -> list[float]:
    """A hand-made vector: zeros except at the given (index, value) pairs."""
    values = [0.0] * dim
    for index, value in hot:
        values[index] = value
    return values


def make_encoder(*, status: str = "active", image_size: int = 32, seed: int = 0):
    """A real (untrained, seeded) encoder checkpoint on disk and its EncoderVersion row."""
    import uuid

    import torch
    from django.conf import settings

    from search.models import EncoderVersion
    from workers.autoencoder.model import EncoderConfig, build_model, save_checkpoint

    torch.manual_seed(seed)
    config = EncoderConfig(image_size=image_size, dim=settings.CBIR_EMBEDDING_DIM)
    folder = settings.VAR_DIR / "encoders" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"test-{uuid.uuid4().hex}.pt"
    save_checkpoint(folder / name, model=build_model(config).eval(), config=config)
    return EncoderVersion.objects.create(
        name="test encoder", arch=config.arch, dim=config.dim, config={"model": config.to_dict()},
        checkpoint=f"checkpoints/{name}", status=status,
    )


def models_as_of(app_label: str, migration: str):
    """The app registry of the models as they were at ``migration`` of ``app_label``: what a test
    that migrates back must write rows with, since today's models have the columns later
    migrations add."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    return MigrationExecutor(connection).loader.project_state((app_label, migration)).apps


def in_own_thread(work, out: list):
    """``work()`` started in a thread of its own (with its own database connection, closed when it
    ends), its result appended to ``out``. Returns the thread."""
    import threading

    from django.db import connection

    def run():
        try:
            out.append(work())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def paused_after(monkeypatch, target: str):
    """Make the function at dotted path ``target`` pause once it has done its work, inside whatever
    transaction its caller holds: it sets the first event returned, then waits for the second
    (at most a minute) before returning."""
    import threading

    module, name = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)
    inside, go = threading.Event(), threading.Event()

    def paused(**kwargs):
        done = real(**kwargs)
        inside.set()
        go.wait(timeout=60)
        return done

    monkeypatch.setattr(target, paused)
    return inside, go


def wsgi_call(method: str, path: str, **headers: str) -> tuple[str, dict, bytes]:
    """(status, headers, body) of ``method path`` (with ``headers``, as WSGI names them:
    ``HTTP_AUTHORIZATION``...) through the WSGI application, as gunicorn calls it, read to the end and
    closed as a server does (the request's start and end would close this test's connection inside
    its transaction, so those signals are held back, as the test client holds them)."""
    from wsgiref.util import setup_testing_defaults

    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from cbir_site.wsgi import application

    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(REQUEST_METHOD=method, PATH_INFO=path, **headers)
    started: dict = {}

    def start_response(status, response_headers, exc_info=None):
        started.update(status=status, headers=dict(response_headers))

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        body = application(environ, start_response)
        try:
            sent = b"".join(body)
        finally:
            body.close()
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    return started["status"], started["headers"], sent


def row_locked_elsewhere(model, pk: int):
    """Row ``pk`` of ``model`` held FOR UPDATE by a transaction of another connection, as a long
    import's, a person's or a worker's stretch would hold it, until the function returned is
    called. For tests whose rows are committed (``transaction=True``)."""
    import threading

    from django.db import transaction

    locked, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            model.objects.select_for_update().filter(pk=pk).exists()
            locked.set()
            release.wait(timeout=300)

    holder = in_own_thread(hold, [])
    assert locked.wait(timeout=30)

    def done():
        release.set()
        holder.join(timeout=30)

    return done
