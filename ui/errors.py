"""Turning exceptions into messages a user can read: never a traceback in the page.

`LocusError` messages are written for users and shown as they are. Running out of memory gets its
own plain explanation. Anything else is a bug: it is logged with its traceback on the server and
the page gets a short generic message, so the app keeps serving.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable

import gradio as gr
import torch

from core.errors import LocusError, OperationCancelled

log = logging.getLogger("locus.ui")

GENERIC_MESSAGE = (
    "Something went wrong inside Locus (the details are in the server log). "
    "The model was left as it was; you can try again."
)
OUT_OF_MEMORY_MESSAGE = (
    "The model ran out of memory for this request. Try fewer samples, a shorter prompt, "
    "fewer edits at once, or a smaller model. The model was left as it was."
)
CANCELLED_MESSAGE = "Stopped. The model was left exactly as it was before."


class Stopped(gr.Error):
    """A job the visitor stopped: not a failure. `friendly` raises it for core.errors.OperationCancelled, so a page
    event wired by ui/controls.py ends normally with "Stopped" on its line (no error toast, no "Error" badge, the
    results on screen untouched); anywhere else it is a short, neutral note."""

    def __init__(self, message: str = CANCELLED_MESSAGE) -> None:
        super().__init__(html.escape(message, quote=False), duration=5, title="Stopped", print_exception=False)


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's out-of-memory errors (CUDA or CPU allocator)."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def is_user_error(error: BaseException) -> bool:
    """True for errors whose message is written for users (core.errors.LocusError)."""
    return isinstance(error, LocusError)


def user_message(error: BaseException) -> str:
    """The plain-words message for `error` (logs the traceback of unexpected errors)."""
    if isinstance(error, OperationCancelled):
        return CANCELLED_MESSAGE
    if is_user_error(error):
        return str(error) or type(error).__name__
    if is_out_of_memory(error):
        log.warning("out of memory: %s", error)
        return OUT_OF_MEMORY_MESSAGE
    log.error("unexpected error in the Locus app", exc_info=(type(error), error, error.__traceback__))
    return GENERIC_MESSAGE


def as_gradio_error(error: BaseException):
    """A gr.Error carrying the user message of `error`, with <, > and & escaped (messages may quote user input; quotes
    stay as they are, since the message is text, never an attribute, and API callers read it plain). A stop
    (OperationCancelled) becomes `Stopped`, which a wired event shows as a neutral line, not as an error."""
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, OperationCancelled):
        return Stopped()
    return gr.Error(html.escape(user_message(error), quote=False), print_exception=False)


def warn(message: str) -> None:
    """Show a non-fatal message in the page (yellow toast)."""
    gr.Warning(html.escape(message, quote=False))


def friendly(handler: Callable) -> Callable:
    """Wrap a Gradio event handler (function or generator) so every failure reaches the page as a gr.Error.

    The wrapper keeps the handler's signature (Gradio reads it for gr.Progress defaults), and lets
    GeneratorExit through, so Gradio can still cancel a streaming handler by closing it.
    """
    if inspect.isgeneratorfunction(handler):

        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except Exception as error:
                raise as_gradio_error(error) from None

        return streaming

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception as error:
            raise as_gradio_error(error) from None

    return plain
