import json

from django import forms
from django.conf import settings

from gallery.models import Collection


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True, "accept": "image/*,.heic,.heif,.zip"}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)]


class UploadImagesForm(forms.Form):
    files = MultipleFileField(
        required=False,
        help_text="Pick many images at once, or .zip archives. Bad files are recorded as failed with the reason.",
    )
    folder = MultipleFileField(
        required=False,
        widget=MultipleFileInput(attrs={"multiple": True, "webkitdirectory": True}),
        help_text=f"Or pick a whole folder, of up to {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files (CBIR_MAX_FILES_PER_UPLOAD; "
        "larger trees: manage.py import_images, or a .zip). Hidden files and other extensions are skipped.",
    )
    # The folder's relative paths in file order, set by the page's script: Django keeps only base names.
    folder_paths = forms.CharField(required=False, widget=forms.HiddenInput)
    label = forms.CharField(required=False, max_length=200, help_text="Label for every file in this upload (optional).")
    labels_from_dirs = forms.BooleanField(
        required=False, help_text="For folders and .zip archives: use each image's folder name as its label."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # An empty file is still a file the admin chose: it becomes a failed row with a reason.
        self.fields["files"].allow_empty_file = True
        self.fields["folder"].allow_empty_file = True

    def clean_files(self):
        return [upload for upload in self.cleaned_data["files"] if upload]

    def clean_folder(self):
        return [upload for upload in self.cleaned_data["folder"] if upload]

    def clean_folder_paths(self) -> list[str]:
        try:
            paths = json.loads(self.cleaned_data["folder_paths"] or "[]")
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            return []
        # Positions pair paths with files: anything but a string stays as "", not dropped.
        return [path if isinstance(path, str) else "" for path in paths] if isinstance(paths, list) else []

    def clean(self):
        cleaned = super().clean()
        if not self.errors and not cleaned.get("files") and not cleaned.get("folder"):
            raise forms.ValidationError("Pick images, .zip archives or a folder.")
        return cleaned


class MoveImagesForm(forms.Form):
    collection = forms.ModelChoiceField(
        queryset=Collection.objects.order_by("name"),
        empty_label="— pick one —",
        help_text="The images keep their labels, status and vectors, and are found under this collection at once. "
        "An image whose file the collection holds already stays where it is.",
    )
