import base64
import logging
from dataclasses import dataclass

import numpy as np
from django import forms
from django.conf import settings
from django.core import signing
from django.http import Http404
from django.shortcuts import get_object_or_404, render

from gallery import imaging
from gallery.models import Collection, Image
from search import selectors

# After a search the page carries its query (the image's vector and preview, signed) in the form,
# so that another collection or number of results searches again with the same image: a browser
# cannot keep a chosen file across a page load. It holds for a day, and for the encoder it came from.
CARRIED_QUERY_SALT = "search.views.carried-query"
CARRIED_QUERY_MAX_AGE_S = 24 * 3600
WHOLE_IMAGE = "whole"  # the "whole image" button's value for the region field


def _vector_text(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def _vector_read(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


@dataclass(frozen=True)
class CarriedQuery:
    encoder_id: int
    vector: np.ndarray  # what is searched with: the whole picture's vector, or its region's
    preview: str  # base64 of the WebP preview of the whole picture
    # the region searched with, as fractions of the preview (left, top, right, bottom), and the
    # whole picture's vector, kept to go back to it; both None while the whole picture is searched
    region: imaging.Region | None = None
    whole_vector: np.ndarray | None = None

    def dumps(self) -> str:
        payload = {"encoder": self.encoder_id, "vector": _vector_text(self.vector), "preview": self.preview}
        if self.region is not None:
            payload.update(region=list(self.region), whole=_vector_text(self.whole_vector))
        return signing.dumps(payload, salt=CARRIED_QUERY_SALT, compress=True)

    @classmethod
    def loads(cls, token: str) -> "CarriedQuery | None":
        """The query of a token this site made in the last day; None for anything else."""
        try:
            payload = signing.loads(token, salt=CARRIED_QUERY_SALT, max_age=CARRIED_QUERY_MAX_AGE_S)
            region = tuple(float(edge) for edge in payload["region"]) if "region" in payload else None
            return cls(
                encoder_id=int(payload["encoder"]), vector=_vector_read(payload["vector"]), preview=str(payload["preview"]),
                region=region, whole_vector=_vector_read(payload["whole"]) if region is not None else None,
            )
        except (signing.BadSignature, ValueError, KeyError, TypeError):  # SignatureExpired is a BadSignature
            return None

    def whole(self) -> "CarriedQuery":
        """This query searching the whole picture again."""
        if self.region is None:
            return self
        return CarriedQuery(encoder_id=self.encoder_id, vector=self.whole_vector, preview=self.preview)

    def cropped(self, region: imaging.Region, *, encoder) -> "CarriedQuery":
        """This query searching ``region`` of its picture, embedded by ``encoder`` from the preview,
        which holds the picture about as the encoders see it (reduced to ``WORKING_SIDE``). Raises
        ``imaging.RegionTooSmall`` for a region too small to search with."""
        picture = imaging.region_crop(imaging.decode_for_encoder(base64.b64decode(self.preview)), region)
        return CarriedQuery(
            encoder_id=self.encoder_id, vector=selectors.picture_embed(picture=picture, encoder=encoder),
            preview=self.preview, region=region, whole_vector=self.vector if self.region is None else self.whole_vector,
        )


class SearchForm(forms.Form):
    image = forms.FileField(
        required=False, help_text=imaging.ACCEPTED_NAMES, widget=forms.FileInput(attrs={"accept": "image/*,.heic,.heif"})
    )
    collection = forms.ModelChoiceField(Collection.objects.all(), required=False, empty_label="All collections")
    k = forms.IntegerField(min_value=1, max_value=settings.CBIR_SEARCH_MAX_K, initial=settings.CBIR_SEARCH_DEFAULT_K)
    query = forms.CharField(required=False, widget=forms.HiddenInput)
    # results to skip: sent only by the pager's buttons, so that another collection, number of
    # results or image starts again from the first
    offset = forms.IntegerField(min_value=0, required=False)
    # a region of the carried picture to search with (search.js fills it from a box drawn on the
    # preview), or "whole" to search with the whole picture again; either starts from the nearest
    region = forms.CharField(required=False, max_length=200, widget=forms.HiddenInput)

    def clean_region(self):
        text = self.cleaned_data["region"].strip()
        if not text or text == WHOLE_IMAGE:
            return text
        try:
            return imaging.region_parse(text)
        except ValueError as exc:
            raise forms.ValidationError(f"That region cannot be searched with: {exc}.") from exc

    def clean(self):
        cleaned = super().clean()
        cleaned["carried"] = None
        # the results marked more or less like the query (relevance feedback), unless another
        # query starts: the marks judged this one's results
        cleaned["marks"], cleaned["marks_problem"] = selectors.Feedback(), ""
        if not (cleaned.get("image") or cleaned.get("region") or self.data.get("marks") == "clear"):
            cleaned["marks"], cleaned["marks_problem"] = marks_read(self.data)
        if cleaned.get("image"):
            cleaned["offset"] = cleaned["region"] = None  # a new image starts from its nearest, whole
            return cleaned  # a new image replaces the one carried
        if cleaned.get("region") or self.data.get("refine") or self.data.get("marks"):
            cleaned["offset"] = None  # a new box, or refined marks, start from the nearest
        if (cleaned.get("offset") or 0) + (cleaned.get("k") or 0) > selectors.MAX_DEPTH:
            self.add_error("offset", f"Results go {selectors.MAX_DEPTH:,} deep at most.")
        if not cleaned.get("query"):
            self.add_error("image", "Choose an image to search with.")
            return cleaned
        cleaned["carried"] = CarriedQuery.loads(cleaned["query"])
        if cleaned["carried"] is None:
            self.add_error("image", "That search is over a day old or was altered; choose the image again.")
        return cleaned


def is_image_id(text: str) -> bool:
    """Whether ``text`` (from a query string) is written as an image id: digits that fit a bigint."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _set_aside(reason: Exception) -> str:
    return f"Your marks were set aside: {reason}."


def marks_read(data) -> tuple[selectors.Feedback, str]:
    """The results a person marked on a page (``like`` and ``unlike`` fields of ``data``, a
    QueryDict, an image id each) as ``Feedback``, with ""; or no marks, with a notice saying why
    they were set aside (a value that is not an id)."""
    marks = {}
    for field in ("like", "unlike"):
        ids = []
        for value in data.getlist(field):
            if not is_image_id(value):
                return selectors.Feedback(), _set_aside(f"not an image id: {value[:20]}")
            ids.append(int(value))
        marks[field] = tuple(dict.fromkeys(ids))
    return selectors.Feedback(liked=marks["like"], disliked=marks["unlike"]), ""


def marks_context(feedback: selectors.Feedback, hits) -> dict:
    """What the pages need to draw the marks: whether any is set, the ids marked each way, and the marks of
    images not on this page, carried as hidden fields so that refining again keeps them."""
    shown = {hit.image.pk for hit in hits or ()}
    return {
        "marked": bool(feedback), "liked": set(feedback.liked), "disliked": set(feedback.disliked),
        "carried_marks": [("like", i) for i in feedback.liked if i not in shown]
        + [("unlike", i) for i in feedback.disliked if i not in shown],
    }


def search_with_marks(search, feedback: selectors.Feedback):
    """``search(feedback)``'s hits, and the reason the marks were dropped (or ""): a mark that
    no longer resolves (its image deleted since, say) leaves the plain search, with a word."""
    try:
        return search(feedback), feedback, ""
    except selectors.FeedbackInvalid as exc:
        return search(selectors.Feedback()), selectors.Feedback(), _set_aside(exc)


def _image_query(image: Image, *, encoder) -> CarriedQuery:
    """A stored image as a query: its vector, and its thumbnail as the preview a region is cut
    from. Raises ``ImageNotIndexed``, or ``OSError`` when storage cannot give the thumbnail."""
    vector = selectors.image_vector(image=image, encoder=encoder)
    if not image.thumbnail:
        raise selectors.ImageNotIndexed(f"image {image.pk} has no thumbnail yet")
    with image.thumbnail.open("rb") as thumbnail:
        preview = thumbnail.read()
    return CarriedQuery(encoder_id=encoder.pk, vector=vector, preview=base64.b64encode(preview).decode())


def search_page(request):
    """Search by an uploaded picture, or a region of it; ``?image=ID`` starts from a stored image
    (the image page's "search with a part of it")."""
    # shown: the query the page carries on; k: the page size of the hits, set with them
    hits, problem, offset, shown, token, k = None, "", 0, None, "", None
    marks, notice = selectors.Feedback(), ""
    form = SearchForm(request.POST or None, request.FILES or None)
    if request.method == "GET" and "image" in request.GET:
        image_id = request.GET["image"]
        if not is_image_id(image_id):
            raise Http404("no such image")
        image = get_object_or_404(Image, pk=int(image_id))
        try:
            encoder = selectors.encoder_active()
            shown = _image_query(image, encoder=encoder)
            hits = selectors.vector_list_similar(vector=shown.vector, encoder=encoder, k=form["k"].initial)
            k = form["k"].initial
        except selectors.ImageNotIndexed as exc:
            problem = f"This image cannot be searched with: {exc}."
        except OSError as exc:
            logging.getLogger(__name__).error("the thumbnail of image %s could not be read: %s", image.pk, exc)
            problem = f"The thumbnail of image {image.pk} could not be read from media storage; the server's log says why."
        except selectors.SearchUnavailable as exc:
            problem = str(exc)
    elif request.method == "POST" and form.is_valid():
        collection = form.cleaned_data["collection"]
        query = form.cleaned_data["carried"]
        try:
            encoder = selectors.encoder_active()
            if form.cleaned_data["image"]:
                data = form.cleaned_data["image"].read()
                if len(data) > settings.CBIR_MAX_UPLOAD_BYTES:
                    raise imaging.ImageRejected(f"file larger than {settings.CBIR_MAX_UPLOAD_BYTES:,} bytes")
                picture = imaging.decode_for_encoder(data)
                preview = imaging.thumbnail_webp(picture, size=settings.CBIR_THUMBNAIL_SIZE)
                query = CarriedQuery(
                    encoder_id=encoder.pk, vector=selectors.picture_embed(picture=picture, encoder=encoder),
                    preview=base64.b64encode(preview).decode(),
                )
            if query.encoder_id != encoder.pk or query.vector.shape != (encoder.dim,):
                form.add_error("image", "The search engine was updated since that search; choose the image again.")
            else:
                region = form.cleaned_data["region"]
                if region == WHOLE_IMAGE:
                    query = query.whole()
                elif region:
                    shown = query  # a region refused leaves the query as it was
                    query = query.cropped(region, encoder=encoder)
                offset = form.cleaned_data["offset"] or 0
                marks, notice = form.cleaned_data["marks"], form.cleaned_data["marks_problem"]
                hits, marks, dropped = search_with_marks(
                    lambda feedback: selectors.vector_list_similar(
                        vector=query.vector, encoder=encoder, k=form.cleaned_data["k"], offset=offset,
                        collection_ids=[collection.pk] if collection else None, feedback=feedback,
                    ),
                    marks,
                )
                notice = notice or dropped
                shown, k = query, form.cleaned_data["k"]
        except imaging.RegionTooSmall as exc:
            form.add_error("region", f"That region cannot be searched with: {exc}.")
        except imaging.ImageRejected as exc:
            form.add_error("image", f"This file cannot be searched with: {exc}")
        except selectors.SearchUnavailable as exc:
            problem = str(exc)
    elif request.method == "POST":
        # a bad number of results, say: the image stays carried for the next try (the form has
        # checked the token already unless a new file came with it)
        shown = form.cleaned_data.get("carried") or CarriedQuery.loads(form.cleaned_data.get("query") or "")
        token = form.cleaned_data["query"] if shown else ""
    return render(
        request,
        "search/search.html",
        {
            "form": form, "hits": hits, "problem": problem, "notice": notice,
            "feedback_form": "image-search", **marks_context(marks, hits),
            "query_preview": "data:image/webp;base64," + shown.preview if shown else "",
            "carried_query": token or (shown.dumps() if shown else ""),
            # the region searched with, as percentages of the preview for the box drawn over it
            "region": _region_shown(shown.region) if shown and shown.region else None,
            "offset": offset, "last_rank": offset + len(hits or ()),
            # the pager's buttons post the form again with the carried query and another offset
            "previous_offset": max(offset - k, 0) if k and offset else None,
            "next_offset": offset + k if k and len(hits) == k and offset + 2 * k <= selectors.MAX_DEPTH else None,
        },
    )


def _region_shown(region: imaging.Region) -> dict[str, str]:
    """The box drawn over the picture (percentages), and the region as the form sends it."""
    left, top, right, bottom = region
    box = (f"{100 * value:.2f}" for value in (left, top, right - left, bottom - top))
    return dict(zip(("left", "top", "width", "height"), box)) | {"value": ",".join(f"{edge:.4f}" for edge in region)}
