"""Formatting for the page: model facts, probabilities, tokens (no computation here)."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


def percent(value: float, digits: int = 1) -> str:
    """0.7016 -> '70.2%' (small values keep two significant digits)."""
    if value is None:
        return "–"
    if 0 < abs(value) < 0.001:
        return f"{value * 100:.2g}%"
    return f"{value * 100:.{digits}f}%"


def visible_token(token: str) -> str:
    """A token as shown on screen: leading spaces as '␣', newlines as '⏎', never empty."""
    if token == "":
        return "∅"
    shown = token.replace("\n", "⏎").replace("\t", "⇥")
    stripped = shown.lstrip(" ")
    return "␣" * (len(shown) - len(stripped)) + stripped if stripped else "␣" * len(shown)


def display_token(token: str) -> str:
    """A token as read aloud: without its leading space ('␣' forms only for blank tokens)."""
    shown = token.replace("\n", "⏎").replace("\t", "⇥").strip(" ")
    return shown or visible_token(token)


def label_value(predictions: Iterable[Any]) -> dict[str, float]:
    """{token: probability} for a gr.Label, tokens made readable and unique."""
    value: dict[str, float] = {}
    for prediction in predictions:
        key = display_token(prediction.token)
        if key in value:
            key = visible_token(prediction.token)
        while key in value:
            key += "\u200b"
        value[key] = float(prediction.probability)
    return value


def model_markdown(status: dict) -> str:
    """The model panel's text for a ModelManager.status() dict."""
    state = status.get("state")
    if state == "loading":
        return f"Loading model **{html.escape(str(status.get('spec')))}**… (the page works as soon as it is ready)"
    if state == "error":
        return f"The model could not be loaded: {html.escape(str(status.get('error')))}"
    if state != "ready":
        return "Waiting for the model…"
    parameters = status.get("parameters", 0)
    rows = [
        ("Model", status.get("name")),
        ("Family", f"{status.get('family')} ({status.get('model_type')})"),
        ("Layers", status.get("layers")),
        ("Hidden size / MLP size", f"{status.get('d_model')} / {status.get('mlp_size')}"),
        ("Parameters", f"{parameters / 1e6:.0f} M" if parameters else "–"),
        ("Device", status.get("device")),
        ("Data type", status.get("dtype")),
        ("Memory (weights)", f"{status.get('memory_mb')} MB"),
        ("Context length", status.get("max_length")),
    ]
    lines = ["| Loaded model | |", "|---|---|"] + [f"| {name} | {html.escape(str(value))} |" for name, value in rows]
    return "\n".join(lines)


def loading_line(spec: str, seconds: float) -> str:
    """The header's one line while the visitor's model loads: what, and for how long so far (no queue talk)."""
    return (f"Loading model **{html.escape(str(spec))}**… {max(0, int(seconds))} s so far "
            "(the page works as soon as it is ready).")


def model_line(status: dict, edits: int = 0) -> str:
    """One line for the page header."""
    if status.get("state") != "ready":
        return model_markdown(status)
    suffix = f" · **your edits: {edits} batch{'es' if edits != 1 else ''}**" if edits else " · original weights"
    return (
        f"Model: **{html.escape(str(status.get('name')))}** · {status.get('layers')} layers · "
        f"{status.get('device')} · {status.get('dtype')}{suffix}"
    )
