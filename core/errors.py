"""User-facing errors: every message here is meant to be shown as is, in the UI and the CLI."""

from __future__ import annotations


class LocusError(Exception):
    """An error whose message is written for the user (no traceback needed)."""


class InputError(LocusError, ValueError):
    """The user's input cannot be used (empty prompt, subject not in prompt, bad setting...)."""


class ModelLoadError(LocusError):
    """A model could not be loaded or is not supported."""


class LayoutError(ModelLoadError):
    """The architecture layout of a model could not be resolved."""


class OperationCancelled(LocusError):
    """The user cancelled a running operation; the model was left as it was."""
