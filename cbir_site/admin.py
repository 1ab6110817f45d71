"""Django's own user and group admins, given the selection check of the service's admins
(``cbir_site.admin_actions``): their "delete selected" answered an altered selection with a 500
too. (The API tokens' admin has no actions.) This app comes after ``django.contrib.auth`` in
INSTALLED_APPS, so its admins are registered when this module is read."""
from django.contrib import admin

from cbir_site.admin_actions import SelectionCheckedAdmin

for model, model_admin in list(admin.site._registry.items()):
    if model._meta.app_label == "auth" and not isinstance(model_admin, SelectionCheckedAdmin):
        admin.site.unregister(model)
        admin.site.register(model, type(type(model_admin).__name__, (SelectionCheckedAdmin, type(model_admin)), {}))
