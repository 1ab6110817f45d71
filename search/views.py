import base64

from django import forms
from django.conf import settings
from django.shortcuts import render

from gallery import imaging
from gallery.models import Collection
from search import selectors


class SearchForm(forms.Form):
    image = forms.FileField(help_text=imaging.ACCEPTED_NAMES, widget=forms.FileInput(attrs={"accept": "image/*,.heic,.heif"}))
    collection = forms.ModelChoiceField(Collection.objects.all(), required=False, empty_label="All collections")
    k = forms.IntegerField(min_value=1, max_value=settings.CBIR_SEARCH_MAX_K, initial=settings.CBIR_SEARCH_DEFAULT_K)


def search_page(request):
    hits, query_preview, problem = None, "", ""
    form = SearchForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data["image"].read()
        collection = form.cleaned_data["collection"]
        try:
            if len(data) > settings.CBIR_MAX_UPLOAD_BYTES:
                raise imaging.ImageRejected(f"file larger than {settings.CBIR_MAX_UPLOAD_BYTES:,} bytes")
            picture = imaging.decode_for_encoder(data)
            hits = selectors.picture_list_similar(
                picture=picture, k=form.cleaned_data["k"], collection_ids=[collection.pk] if collection else None
            )
            preview = imaging.thumbnail_webp(picture, size=settings.CBIR_THUMBNAIL_SIZE)
            query_preview = "data:image/webp;base64," + base64.b64encode(preview).decode()
        except imaging.ImageRejected as exc:
            form.add_error("image", f"This file cannot be searched with: {exc}")
        except selectors.SearchUnavailable as exc:
            problem = str(exc)
    return render(
        request, "search/search.html", {"form": form, "hits": hits, "query_preview": query_preview, "problem": problem}
    )
