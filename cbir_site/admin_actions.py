"""What every model admin of the service shares."""
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.http import HttpResponseRedirect


class SelectionCheckedAdmin(admin.ModelAdmin):
    """A model admin whose actions first check that the selection is a list of ids. A form that
    sends anything else (altered, or cut short in transit) made the admin's own filter raise, a
    500; now the list says so and nothing is done."""

    def response_action(self, request, queryset):
        try:
            for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
                int(value)  # as the id field reads it: also refuses "", "nan" and 5,000 digits
        except ValueError:
            self.message_user(request, "The selection sent is not a list of ids, so nothing was done; tick the items again.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)
