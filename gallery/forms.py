from django import forms


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"multiple": True, "accept": "image/*,.zip"}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)]


class UploadImagesForm(forms.Form):
    files = MultipleFileField(
        help_text="Pick many images at once, or .zip archives. Bad files are recorded as failed with the reason."
    )
    label = forms.CharField(required=False, max_length=200, help_text="Label for every file in this upload (optional).")
    labels_from_dirs = forms.BooleanField(
        required=False, help_text="For .zip archives: use each image's folder name as its label."
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # An empty file is still a file the admin chose: it becomes a failed row with a reason.
        self.fields["files"].allow_empty_file = True
