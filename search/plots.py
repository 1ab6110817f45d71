"""The seeds' result grid: each query beside its top-k with distances; wrong results framed red."""
from __future__ import annotations

from pathlib import Path

from PIL import Image as PILImage
from PIL import ImageDraw, ImageOps

from gallery.models import Image
from search.selectors import Hit

CELL = 112
CAPTION = 28
GAP = 12
RIGHT, WRONG, QUERY = (6, 118, 71), (196, 50, 10), (52, 84, 209)


def _picture(image: Image) -> PILImage.Image:
    field = image.thumbnail or image.file
    with field.open("rb") as handle:
        picture = PILImage.open(handle)
        picture.load()
    return ImageOps.pad(picture.convert("RGB"), (CELL - 8, CELL - 8), color=(255, 255, 255))


def result_grid_png(path: Path, rows: list[tuple[Image, list[Hit]]]) -> None:
    """One row per query: the query (blue frame), then its hits, green when the label matches the
    query's and red when it does not, each captioned with its rank and cosine distance."""
    columns = 1 + max((len(hits) for _, hits in rows), default=0)
    canvas = PILImage.new("RGB", (columns * CELL + GAP, len(rows) * (CELL + CAPTION) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (query, hits) in enumerate(rows):
        top = GAP // 2 + r * (CELL + CAPTION)
        cells = [(query, QUERY, f"query: {query.label}"[:18])]
        cells += [
            (hit.image, RIGHT if hit.image.label == query.label else WRONG, f"#{i} d={hit.distance:.3f}")
            for i, hit in enumerate(hits, start=1)
        ]
        for c, (image, colour, caption) in enumerate(cells):
            left = c * CELL + (GAP if c else 0)
            draw.rectangle([left, top, left + CELL - 2, top + CELL - 2], outline=colour, width=4)
            canvas.paste(_picture(image), (left + 4, top + 4))
            draw.text((left + 4, top + CELL), caption, fill=colour)
    canvas.save(path)
