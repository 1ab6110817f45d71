import base64
from dataclasses import dataclass

import numpy as np
from django import forms
from django.conf import settings
from django.core import signing
from django.shortcuts import render

from gallery import imaging
from gallery.models import Collection
from search import selectors

# After a search the page carries its query (the image's vector and preview, signed) in the form,
# so that another collection or number of results searches again with the same image: a browser
# cannot keep a chosen file across a page load. It holds for a day, and for the encoder it came from.
CARRIED_QUERY_SALT = "search.views.carried-query"
CARRIED_QUERY_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class CarriedQuery:
    encoder_id: int
    vector: np.ndarray
    preview: str  # base64 of the WebP preview

    def dumps(self) -> str:
        payload = {"encoder": self.encoder_id, "vector": base64.b64encode(self.vector.astype("<f4").tobytes()).decode(), "preview": self.preview}
        return signing.dumps(payload, salt=CARRIED_QUERY_SALT, compress=True)

    @classmethod
    def loads(cls, token: str) -> "CarriedQuery | None":
        """The query of a token this site made in the last day; None for anything else."""
        try:
            payload = signing.loads(token, salt=CARRIED_QUERY_SALT, max_age=CARRIED_QUERY_MAX_AGE_S)
            vector = np.frombuffer(base64.b64decode(payload["vector"]), dtype="<f4").astype(np.float32)
            return cls(encoder_id=int(payload["encoder"]), vector=vector, preview=str(payload["preview"]))
        except (signing.BadSignature, ValueError, KeyError, TypeError):  # SignatureExpired is a BadSignature
            return None


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

    def clean(self):
        cleaned = super().clean()
        cleaned["carried"] = None
        if cleaned.get("image"):
            cleaned["offset"] = None  # a new image starts from its nearest
            return cleaned  # a new image replaces the one carried
        if (cleaned.get("offset") or 0) + (cleaned.get("k") or 0) > selectors.MAX_DEPTH:
            self.add_error("offset", f"Results go {selectors.MAX_DEPTH:,} deep at most.")
        if not cleaned.get("query"):
            self.add_error("image", "Choose an image to search with.")
            return cleaned
        cleaned["carried"] = CarriedQuery.loads(cleaned["query"])
        if cleaned["carried"] is None:
            self.add_error("image", "That search is over a day old or was altered; choose the image again.")
        return cleaned


def search_page(request):
    hits, query_preview, problem, carry, offset = None, "", "", "", 0
    form = SearchForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        collection = form.cleaned_data["collection"]
        try:
            encoder = selectors.encoder_active()
            query = form.cleaned_data["carried"]
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
                offset = form.cleaned_data["offset"] or 0
                hits = selectors.vector_list_similar(
                    vector=query.vector, encoder=encoder, k=form.cleaned_data["k"], offset=offset,
                    collection_ids=[collection.pk] if collection else None,
                )
                query_preview, carry = "data:image/webp;base64," + query.preview, query.dumps()
        except imaging.ImageRejected as exc:
            form.add_error("image", f"This file cannot be searched with: {exc}")
        except selectors.SearchUnavailable as exc:
            problem = str(exc)
    elif request.method == "POST" and (
        query := form.cleaned_data.get("carried") or CarriedQuery.loads(form.cleaned_data.get("query") or "")
    ):
        # a bad number of results, say: the image stays carried for the next try (the form has
        # checked the token already unless a new file came with it)
        query_preview, carry = "data:image/webp;base64," + query.preview, form.cleaned_data["query"]
    k = form.cleaned_data.get("k") if hits is not None else None
    return render(
        request,
        "search/search.html",
        {
            "form": form, "hits": hits, "query_preview": query_preview, "problem": problem, "carried_query": carry,
            "offset": offset, "last_rank": offset + len(hits or ()),
            # the pager's buttons post the form again with the carried query and another offset
            "previous_offset": max(offset - k, 0) if k and offset else None,
            "next_offset": offset + k if k and len(hits) == k and offset + 2 * k <= selectors.MAX_DEPTH else None,
        },
    )
