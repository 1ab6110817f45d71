"""The management commands refuse arguments they cannot act on with a CommandError that says why,
before they create anything or spend minutes on work they then cannot finish."""
import pytest
import torch
from django.core.management import CommandError, call_command

from gallery.services import collection_get_or_create
from search.models import EncoderVersion

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--max-minutes", "-1"], "--max-minutes must be above 0"),
        (["--max-minutes", "0"], "--max-minutes must be above 0"),
        (["--lr", "0"], "--lr and --max-minutes must be above 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--device", "gpu"], "--device 'gpu' names no device"),
        pytest.param(
            ["--device", "cuda"], "this machine has no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
    ids=["negative-minutes", "zero-minutes", "zero-lr", "zero-batch", "no-such-device", "cuda-without-one"],
)
def test_train_encoder_refuses_settings_it_cannot_train_with(arguments, message):
    """A negative --max-minutes trained one epoch and stored the encoder; --device cuda on a
    machine without CUDA was a traceback and left a failed version behind."""
    collection_get_or_create(name="c")
    with pytest.raises(CommandError, match=message):
        call_command("train_encoder", "--collection", "c", *arguments)
    assert not EncoderVersion.objects.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--plot", "/nonexistent/folder/grid.png"], "--plot: no folder /nonexistent/folder"),
        (["--plot", "."], "--plot: name a .png file"),
        (["--plot", "grid.jpg"], "--plot: name a .png file"),
        (["--plot", "grid.png", "--plot-queries", "0"], "--plot-queries must be at least 1"),
    ],
    ids=["no-such-folder", "a-folder", "not-png", "no-queries"],
)
def test_evaluate_refuses_a_plot_it_could_not_write_before_evaluating(arguments, message):
    """These were tracebacks (FileNotFoundError, ValueError), raised after the whole evaluation."""
    collection_get_or_create(name="c")  # nothing to evaluate: the arguments are refused first
    with pytest.raises(CommandError, match=message):
        call_command("evaluate", "--collection", "c", *arguments)


@pytest.mark.parametrize("minutes", ["-5", "nan", "1e308"])
def test_prune_media_refuses_an_age_that_is_not_a_number_of_minutes(minutes):
    """NaN passed the check for negative values, and both NaN and 1e308 then raised a traceback
    (ValueError, OverflowError) building the age: a command that deletes files says what it takes."""
    with pytest.raises(CommandError, match="--older-than takes minutes from 0 to"):
        call_command("prune_media", "--older-than", minutes, "--dry-run")
