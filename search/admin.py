from django.contrib import admin, messages

from search.models import EncoderVersion
from search.services import encoder_activate


@admin.register(EncoderVersion)
class EncoderVersionAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "arch", "dim", "status", "trained_on", "created_at", "activated_at", "summary"]
    list_filter = ["status", "arch"]
    readonly_fields = ["arch", "dim", "config", "checkpoint", "trained_on", "status", "metrics", "error", "created_at", "activated_at"]
    actions = ["activate"]

    @admin.display(description="training")
    def summary(self, obj):
        history = (obj.metrics or {}).get("training") or {}
        if not history.get("train_loss"):
            return "—"
        return f"{history['epochs_run']} epochs, loss {history['train_loss'][-1]:.4f}, {history.get('seconds', '?')} s on {history.get('device')}"

    @admin.action(description="Activate (re-embed every image, then switch search to it)")
    def activate(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Pick exactly one encoder to activate.", messages.ERROR)
            return
        try:
            encoder_activate(encoder=queryset.get())
        except ValueError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, "Re-embedding started; search switches when every image is done.", messages.SUCCESS)
