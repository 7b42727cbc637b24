"""Model health on the page: the caption, the tables and the warnings of editor.evaluation.health's reports (formatting only)."""

from __future__ import annotations

import html
import math

from editor.evaluation.health import (
    COLLAPSE_RATIO,
    PERPLEXITY_TOKENS,
    PERPLEXITY_WARNING,
    PROBE_COUNT,
    RETENTION_WARNING,
    Health,
    HealthReport,
)
from editor.statistics.corpus import HELD_OUT_TEXTS

HEALTH_CAPTION = (
    "### Model health\n"
    "An edit should change the facts you asked for and leave everything else alone. Two checks of *everything else*, "
    "on the original model and with your edits:\n\n"
    f"- **Perplexity on held-out text**: how surprised the model is by {HELD_OUT_TEXTS} ordinary Wikipedia texts "
    f"(up to {PERPLEXITY_TOKENS} tokens each) that no edit ever reads. Lower is better; if it rises, the edits are "
    "changing how the model writes ordinary text.\n"
    f"- **Known-fact retention**: of {PROBE_COUNT} facts the model knew (none about the subjects you edited), the share "
    "it still completes with the right first word. Higher is better; if it falls, the edits are overwriting unrelated "
    "knowledge.\n\n"
    f"Locus warns when perplexity rises more than {PERPLEXITY_WARNING - 1:.0%} (over ×{PERPLEXITY_WARNING:.2f} the original "
    f"model's) or retention falls below {RETENTION_WARNING:.0%} of the original model's, and calls the model **collapsed** "
    f"when its perplexity is more than ×{COLLAPSE_RATIO:g} the original's or it computes non-finite numbers. Each model "
    "state takes minutes to measure on a CPU (the line under the button estimates how long once it has measured the first "
    "texts); figures already measured are remembered."
)

HEALTH_HISTORY_CAPTION = (
    "**Health per batch**: perplexity on held-out text and known-fact retention after each batch of your history "
    f"(warnings past ×{PERPLEXITY_WARNING:.2f} perplexity or {RETENTION_WARNING:.0%} of the original retention; "
    "minutes on a CPU for each batch not measured before; the line under the button estimates how long)."
)

HEALTH_COLUMNS = [
    "model",
    "perplexity on held-out text (lower is better)",
    "× original",
    "known facts retained (%)",
    "held-out tokens",
    "probe facts",
]
HEALTH_HISTORY_COLUMNS = ["batch", "edits so far", "perplexity", "× original", "retention (%)", "warnings"]
WARNING_MARK = "⚠"


def perplexity_text(value: float) -> str:
    """A perplexity for a table cell ('∞' when it overflowed)."""
    return f"{value:.2f}" if math.isfinite(value) else "∞"


def _ratio_cell(unedited: Health, health: Health) -> str:
    ratio = health.perplexity / unedited.perplexity
    text = f"×{ratio:.3f}" if math.isfinite(ratio) else "∞"
    return f"{text} {WARNING_MARK}" if ratio > PERPLEXITY_WARNING or not health.finite else text


def _retention_cell(unedited: Health, health: Health) -> str:
    text = f"{health.retention:.0f}"
    return f"{text} {WARNING_MARK}" if health.retention < RETENTION_WARNING * unedited.retention else text


def health_rows(report: HealthReport) -> list[list[str | int]]:
    """One row for the original model and, when there are edits, one with them (drifted cells marked ⚠)."""
    unedited = report.unedited
    rows: list[list[str | int]] = [
        ["original", perplexity_text(unedited.perplexity), "×1.000", f"{unedited.retention:.0f}", unedited.tokens, unedited.probes]
    ]
    if report.edited is not None:
        edited = report.edited
        rows.append([
            f"with your {report.edits} edit{'s' if report.edits != 1 else ''}", perplexity_text(edited.perplexity),
            _ratio_cell(unedited, edited), _retention_cell(unedited, edited), edited.tokens, edited.probes,
        ])
    return rows


def original_text(unedited: Health) -> str:
    """The original model's figures in one sentence."""
    return (
        f"Original model: perplexity **{perplexity_text(unedited.perplexity)}** on {unedited.tokens:,} held-out tokens, "
        f"**{unedited.retention:.0f}%** of {unedited.probes} known facts answered."
    )


def health_summary(report: HealthReport) -> str:
    """The report in plain words: the figures, then the warnings (highlighted) or that all is within the thresholds."""
    unedited = report.unedited
    original = original_text(unedited)
    if report.edited is None:
        return (
            f"{original}  \nYou have no edits yet, so there is nothing to compare: apply an edit on the **Edit** tab, "
            "then measure again."
        )
    edited = report.edited
    ratio = report.perplexity_ratio
    figures = (
        f"With your {report.edits} edit{'s' if report.edits != 1 else ''}: perplexity "
        f"**{perplexity_text(edited.perplexity)}** (×{ratio:.3f} the original's), **{edited.retention:.0f}%** of the "
        "known facts still answered."
    )
    if report.collapsed:
        return f"{original}  \n{figures}\n\n> ⛔ **The model has collapsed.** {html.escape(report.collapsed)} Undo the last batch."
    forgotten = forgotten_text(edited)
    if report.warnings:
        listed = "\n".join(f"> - {html.escape(warning)}" for warning in report.warnings)
        return f"{original}  \n{figures}\n\n> {WARNING_MARK} **Drift warning**\n{listed}{forgotten}"
    return (
        f"{original}  \n{figures}  \nWithin the thresholds: perplexity at most ×{PERPLEXITY_WARNING:.2f} the original's "
        f"and retention at least {RETENTION_WARNING:.0%} of it.{forgotten}"
    )


def forgotten_text(edited: Health, shown: int = 8) -> str:
    """The known facts the edited model now answers differently, the first `shown` of them ('' when none)."""
    if not edited.forgotten:
        return ""
    lines = [f"- *{html.escape(fact['prompt'])}* → now **{html.escape(fact['answer'].strip() or repr(fact['answer']))}** "
             f"(knew: {html.escape(fact['expected'])})" for fact in edited.forgotten[:shown]]
    more = len(edited.forgotten) - shown
    tail = f"\n- ... and {more} more" if more > 0 else ""
    return (f"\n\nKnown facts it now answers differently ({len(edited.forgotten)} of {edited.probes}; none of them was "
            "edited):\n" + "\n".join(lines) + tail)


def history_rows(batch_ids: list[str], reports: list[HealthReport]) -> list[list[str | int]]:
    """One row per batch of the history (after the original model's row): figures with batches 1..i applied."""
    if not reports:
        return []
    unedited = reports[0].unedited
    rows: list[list[str | int]] = [
        ["(original)", 0, perplexity_text(unedited.perplexity), "×1.000", f"{unedited.retention:.0f}", ""]
    ]
    for batch_id, report in zip(batch_ids, reports):
        edited = report.edited
        rows.append([
            batch_id, report.edits, perplexity_text(edited.perplexity), _ratio_cell(report.unedited, edited),
            _retention_cell(report.unedited, edited), " ".join(report.warnings) or "none",
        ])
    return rows


def history_summary(batch_ids: list[str], reports: list[HealthReport]) -> str:
    """One line about the history's health: the first batch that drifted, or that none did.

    `batch_ids` are all the history's batches; `reports` the ones measured so far (fewer while it streams).
    """
    if not batch_ids:
        return "There are no edits yet: the history is empty."
    drifted = [index for index, report in enumerate(reports) if report.warnings]
    total = len(batch_ids)
    if len(reports) < total:
        measured = f"Measuring batch by batch: {len(reports)} of your {total} batches so far."
        if not drifted:
            return f"{measured} None has drifted past the thresholds yet."
    else:
        measured = f"Measured after each of your {total} batch{'es' if total != 1 else ''}."
    if not drifted:
        return f"{measured} No batch drifted past the thresholds."
    first = drifted[0]
    word = "collapsed" if reports[first].collapsed else "drifted past the thresholds"
    return (f"{measured} {WARNING_MARK} **The model first {word} after batch {html.escape(str(batch_ids[first]))}** "
            "(see the warnings column).")
