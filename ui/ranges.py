"""The Choose R tab's service (both its sections: the tracing curve, and R measured by editing): what the tab asks
of the tracer and the editor, so ui/tabs/range_tab.py and range_measure.py import only Gradio, ui.* and core.errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.embedded import EMBEDDED_SPEC
from core.errors import InputError
from core.progress import Progress, stage
from editor.evaluation.counterfact import load_records
from editor.layers import AUTO_FACTS, layers_text, outlier_flags
from editor.methods.memit import Memit
from editor.studies.devset import devset_file
from editor.studies.figures import windows_figure
from editor.studies.windows import measure_windows_stream, parse_windows, tracing_recommendation
from tracer.figures import empty_figure, range_label, recommendation_figure
from tracer.recommend import packaged_recommendation, recommend_layers
from ui import limits
from ui.editing import applied_records, with_true_objects

__all__ = [
    "SHIFT", "around", "around_note", "checked_windows", "chosen_records", "curve_figure", "default_source", "devset_file",
    "empty_figure", "layers_text", "measure_stream", "outlier_flags", "range_label", "recommendation_figure",
    "recommendation_for", "records_note", "windows_figure",
]

SHIFT = 2  # the default windows: the tracing R and R shifted this many layers either side


# --- the tracing curve ------------------------------------------------------------------------------------------

def default_source(model_spec: str) -> str:
    """Where the curve comes from on a fresh page: the packaged averages for the embedded model, else the last trace."""
    return "packaged" if model_spec == EMBEDDED_SPEC else "trace"


def recommendation_for(session: Any, source: str, width: int, flagged: dict[int, str] | None = None, loaded: Any = None) -> Any:
    """The tracer's recommendation from the packaged averages, the last trace or the averages (InputError if there is none)."""
    if source == "packaged":
        if loaded is None:
            raise InputError("The model is still loading; try again in a moment.")
        recommendation = packaged_recommendation(loaded, width, flagged)
        if recommendation is None:
            raise InputError(
                "This model has no packaged averages (only the embedded model ships them): compute averages on the "
                "Averages tab and choose 'The averages', or choose 'The last trace'."
            )
        return recommendation
    if source == "average":
        if session.average is None:
            raise InputError("There are no averages yet: run them on the Averages tab, or choose 'The last trace'.")
        return recommend_layers(session.average, width=width, flagged_layers=flagged)
    if session.trace is None:
        raise InputError("There is no trace yet: run one on the Trace tab (or click an example) first.")
    if "mlp" not in session.trace.scores:
        raise InputError("The last trace did not include the MLP kind; trace again with MLP selected (Advanced).")
    return recommend_layers(session.trace, width=width, flagged_layers=flagged)


EMPTY_CURVE = {
    "packaged": "This model has no packaged averages: compute them on the Averages tab.",
    "trace": "Run a trace (Trace tab) to see the MLP effect curve here.",
    "average": "Compute averages (Averages tab) to see the averaged MLP effect curve here.",
}


def curve_figure(recommendation: Any, source: str, low: int, high: int) -> Any:
    """The curve with the user's R, or a note on what to run first."""
    if recommendation is None:
        return empty_figure(EMPTY_CURVE[source])
    return recommendation_figure(recommendation, (low, high))


# --- R measured by editing --------------------------------------------------------------------------------------

TRACE_SHARE = 0.5  # of the line, for tracing AUTO_FACTS facts first when a model has no packaged averages (a guess:
# the measurement after it is estimated by its own steps' costs, editor/studies/work_plan.py)


def chosen_records(loaded: Any, session: Any, source: str, count: int) -> list[Any]:
    """The first `count` records of the dev set, or of the session's applied requests and imported records (fewer
    when there are fewer: `records_note` says so)."""
    if source == "devset":
        path = devset_file(loaded)
        if not path.is_file():
            raise InputError(
                "This model has no dev set (only the embedded model ships one): build it with `python -m editor devset`, "
                "or choose 'My edits and imported records'."
            )
        return load_records(path)[:count]
    records = applied_records(session) + list(session.records)
    if not records:
        raise InputError(
            "You have no edits or imported records yet: apply an edit on the Edit tab (or import CounterFact records), "
            "or choose 'The dev set'."
        )
    return records[:count]


def records_note(records: list[Any], count: int, mine: bool) -> str:
    """'10 dev-set records', or, when fewer than asked for are there, how many and why (never silently fewer)."""
    what = "of your records" if mine else "dev-set records"
    if len(records) >= count:
        return f"{len(records)} {what}"
    return f"{len(records)} {what} (you asked for {count}; there are only {len(records)})"


def around(layers: list[int], num_layers: int, shift: int = SHIFT) -> list[tuple[int, ...]]:
    """R and R shifted by up to `shift` layers either side (clipped to the model), distinct, in order."""
    width, start = len(layers), min(layers)
    starts = sorted({max(0, min(num_layers - width, start + step)) for step in range(-shift, shift + 1)})
    return [tuple(range(first, first + width)) for first in starts]


def around_note(layers: list[int], num_layers: int, shift: int = SHIFT) -> str:
    """Why `around` gives fewer than 2 * shift + 1 ranges, when it does ('' otherwise)."""
    windows = around(layers, num_layers, shift)
    if not layers or len(windows) == 2 * shift + 1:
        return ""
    edge = "layer 0 is the first" if min(layers) - shift < 0 else f"layer {num_layers - 1} is the last"
    return (f"{len(windows)} ranges instead of {2 * shift + 1}: tracing's R = {layers_text(layers)} moved up to {shift} "
            f"layers either side stops where the model does ({edge}).")


def checked_windows(text: str, num_layers: int, width: int) -> list[tuple[int, ...]] | None:
    """The windows typed ('all' or '1-5,2-6'), refused plainly when malformed; None (empty) = around tracing's R."""
    text = limits.text(text, "Windows", limit=limits.MAX_LAYER_TEXT).strip()
    if not text:
        return None
    try:
        return parse_windows(text, num_layers, width)
    except InputError as error:
        raise InputError(f"Ranges R to try: {error} (Leave it empty for tracing's R and its neighbours, or write 'all'.)") from None


def measure_stream(
    loaded: Any, records: list[Any], windows: list[tuple[int, ...]] | None, width: int, *, cov_tokens: int | None,
    recommendation: Any, mine: bool, progress: Progress | None,
) -> Iterator[Any]:
    """WindowsUpdates of MEMIT editing `records` at each window (tracing's R and its neighbours when `windows` is
    None); tracing's R from `recommendation`, the packaged averages, or averages of AUTO_FACTS facts. `mine`: the
    visitor's records, whose missing true objects are the model's current answers."""
    tracing = recommendation or packaged_recommendation(loaded, width, outlier_flags(loaded, cov_tokens))
    measuring = progress
    if tracing is None:  # the windows follow tracing's R: trace first, on the first half of the one progress line
        tracing, _ = tracing_recommendation(loaded, width, AUTO_FACTS, progress=stage(progress, 0.0, TRACE_SHARE))
        measuring = stage(progress, TRACE_SHARE, 1.0)
    windows = windows if windows is not None else around(tracing.layers, loaded.layout.num_layers)
    method = Memit.for_model(loaded.layout, layers=windows[0], cov_tokens=cov_tokens)
    edited = with_true_objects(loaded, records) if mine else records
    return measure_windows_stream(loaded, edited, windows, method, width=width, progress=measuring, recommendation=tracing)
