from django.contrib import admin, messages
from django.http import FileResponse, Http404
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from cbir_site.admin_actions import SelectionCheckedAdmin
from search.models import EncoderVersion
from search.selectors import encoder_reembedding_progress
from search.services import encoder_activate


def _error_html(encoder: EncoderVersion) -> str:
    """What stopped its training or its re-embedding, in the admin's red."""
    return format_html('<span style="color:#ba2121">{}</span>', encoder.error[:300])


@admin.register(EncoderVersion)
class EncoderVersionAdmin(SelectionCheckedAdmin):
    # arch (in the default name, and a filter), dim and created_at are on each version's page:
    # the list has to fit a laptop's screen
    list_display = ["id", "name", "status", "trained_on", "activated_at", "summary", "progress", "quality"]
    list_filter = ["status", "arch"]
    readonly_fields = [
        "arch", "dim", "config", "checkpoint", "trained_on", "status", "summary", "progress", "quality", "pictures",
        "metrics", "error", "created_at", "activated_at",
    ]
    actions = ["activate"]

    def has_add_permission(self, request):
        """Versions come from training (Collections → Train an encoder, or ``train_encoder``): a
        row added by hand would have no weights, width or architecture."""
        return False

    @admin.display(description="training")
    def summary(self, obj):
        if obj.status == EncoderVersion.Status.FAILED and obj.error:
            return _error_html(obj)
        history = (obj.metrics or {}).get("training") or {}
        if not history.get("train_loss"):
            return "waiting to start" if obj.status == EncoderVersion.Status.TRAINING else "—"
        planned = ((obj.config or {}).get("training") or {}).get("epochs", "?")
        text = f"epoch {history['epochs_run']}/{planned}, loss {history['train_loss'][-1]:.4f}"
        if "seconds" in history:
            text += f", {history['seconds']} s on {history.get('device')}"
        return text

    @admin.display(description="re-embedding")
    def progress(self, obj):
        """How far an activation has got, and what stopped it, if anything did."""
        if obj.status != EncoderVersion.Status.ACTIVATING:
            return "—"
        done, total = encoder_reembedding_progress(encoder=obj)
        text = f"{done:,} of {total:,} images"
        return format_html("{}<br>{}", text, _error_html(obj)) if obj.error else text

    @admin.display(description="evaluation (P@10 / mAP@10)")
    def quality(self, obj):
        evaluations = (obj.metrics or {}).get("evaluation") or {}
        if not evaluations:
            return "—"
        return format_html_join(
            ", ", "{}: {} / {}{}",
            (
                (name, m.get("P@10", "?"), m.get("mAP@10", "?"), f" (query expansion {m['query_expansion']})" if m.get("query_expansion") else "")
                for name, m in evaluations.items()
            ),
        )

    @admin.display(description="loss curve and reconstructions")
    def pictures(self, obj):
        artifacts = ((obj.metrics or {}).get("training") or {}).get("artifacts") or {}
        return format_html_join(
            " ",
            '<img src="{}" alt="{}" style="max-width:640px;display:block;margin-bottom:8px">',
            ((reverse("admin:search_encoderversion_artifact", args=[obj.pk, kind]), kind) for kind in artifacts),
        ) or "—"

    def get_urls(self):
        return [
            path(
                "<int:encoder_id>/artifact/<str:kind>/",
                self.admin_site.admin_view(self.artifact_view),
                name="search_encoderversion_artifact",
            ),
            *super().get_urls(),
        ]

    def artifact_view(self, request, encoder_id: int, kind: str):
        encoder = get_object_or_404(EncoderVersion, pk=encoder_id)
        name = (((encoder.metrics or {}).get("training") or {}).get("artifacts") or {}).get(kind)
        if not name or not encoder.checkpoint.storage.exists(name):
            raise Http404("no such picture")
        return FileResponse(encoder.checkpoint.storage.open(name, "rb"), content_type="image/png")

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
