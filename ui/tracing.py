"""The Trace tab's service (and the Test tab's re-trace): everything they ask of the tracer, so ui/tabs/trace_tab.py
imports only Gradio, ui.* and core.errors.

- `TraceForm`: the Trace tab's values as one checked form (ui/forms.py), its `settings(num_layers)` the tracer's.
- The model state an output was computed on (`ModelState`: "original weights" or "your edits: N batches", keyed by the
  session's ledger), so every output says which one, and an output computed before the visitor's last edit, undo,
  reset or import is marked so (`Shown.stale`).
- The work of a trace, a preview, the top prediction and the re-trace as functions `(job, loaded) -> ...` for the
  runner, and the texts and figures the page shows of their results (units follow the metric: tracer.figures).
- A trace's settings as the page's address (`query_of` / `form_of_query`): a link reopens the same settings; never
  an edit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import html
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import InputError, LocusError
from core.kinds import HEADS, KINDS, TRACE_KINDS
from core.predict import next_token_probabilities, top_tokens
from core.progress import derived
from core.tokens import encode_prompt, target_token_ids
from tracer import figures
from tracer.modes import AUTO, CORRUPTIONS, HEAD_POSITIONS, METRICS, corruption_words, metric_name
from tracer.noise import NOISE_TYPES
from tracer.preview import preview_trace
from tracer.problem import MAX_TRACE_TOKENS
from tracer.trace import TraceResult, TraceSettings, trace, trace_stream
from ui import forms, limits
from ui.display import display_token, percent
from ui.editing import ledger_batches
from ui.forms import Form

__all__ = [
    "HEADS", "KINDS", "TRACE_KIND_CHOICES", "ModelState", "Shown", "TraceForm", "model_state", "highlighted_tokens",
    "status_markdown", "stopped_markdown", "prediction_work", "prediction_text", "trace_work", "preview_work",
    "heatmaps", "retrace_work", "retrace_summary", "difference_figures", "query_of", "form_of_query",
]

CORRUPTION_CHOICES = [
    ("noise on the subject's words (ROME)", "noise"),
    ("replace the subject (one counterfactual subject)", "replace"),
    ("resample (another known subject per sample)", "resample"),
]
METRIC_CHOICES = [("probability (ROME)", "prob"), ("logit difference", "logit-diff"), ("log probability", "logprob")]
HEAD_POSITION_CHOICES = [("the last token", "last"), ("every token from the subject on", "all")]
TRACE_KIND_CHOICES = [*figures.KIND_CHOICES, (figures.kind_title(HEADS), HEADS)]
NOISE_TYPE_CHOICES = list(NOISE_TYPES)
KIND_TITLES = {kind: figures.kind_title(kind) for kind in TRACE_KINDS}


# --- the form -------------------------------------------------------------------------------------------------------

def _or(default: Any, check: Any) -> Any:
    """A check that reads None (an API caller leaving the value out) as `default`."""
    return lambda value: check(default if value is None else value)


def _kinds(value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    return tuple(limits.choice(kind, "What to restore", TRACE_KINDS) for kind in values)


def _seed(value: Any) -> int:
    return limits.whole(value if value not in (None, "") else 1, "Seed", limits.SEED)


@dataclass(frozen=True)
class TraceForm(Form):
    """The Trace tab's values (the page's initial values as defaults); the window's bound is the loaded model's (the
    handler checks it with `settings(num_layers)`), and the subject's place in the prompt is the tokenizer's."""

    prompt: str = forms.text("The prompt")
    subject: str = forms.text("The subject", limit=500)
    answer: str = forms.text("The answer", limit=200)
    kinds: tuple[str, ...] = forms.checked(_kinds, tuple(KINDS))
    samples: int = forms.checked(_or(10, lambda value: limits.whole(value, "Noise samples", limits.SAMPLES)), 10)
    noise: str = forms.checked(_or("3x", lambda value: limits.text(value, "Noise", limit=40).strip() or "3x"), "3x")
    window: int = forms.checked(_or(10, lambda value: limits.whole(value, "Window", (1, limits.MAX_LAYER_TEXT))), 10)
    seed: int = forms.checked(_seed, 1)
    noise_type: str = forms.checked(_or("gaussian", lambda value: limits.choice(value, "Noise type", NOISE_TYPES)), "gaussian")
    corruption: str = forms.checked(_or("noise", lambda value: limits.choice(value or "noise", "Corruption", CORRUPTIONS)),
                                    "noise")
    replacement: str = forms.checked(
        _or(AUTO, lambda value: limits.text(value, "Replacement subject", limit=200).strip() or AUTO), AUTO
    )
    metric: str = forms.checked(_or("prob", lambda value: limits.choice(value or "prob", "Metric", METRICS)), "prob")
    head_positions: str = forms.checked(
        _or("last", lambda value: limits.choice(value or "last", "Heads restored at", HEAD_POSITIONS)), "last"
    )

    def checked(self) -> None:
        self.settings()  # every setting usable (the noise parsed, the modes consistent)

    def require_text(self) -> None:
        """Refuse an empty prompt or subject (a trace needs both; typing may leave them empty)."""
        if not self.prompt.strip():
            raise InputError("The prompt is empty: type a sentence that the model should complete.")
        if not self.subject.strip():
            raise InputError("The subject is empty: type the words of the prompt that name the subject.")

    def settings(self, num_layers: int | None = None) -> TraceSettings:
        """The tracer's settings (InputError with a plain message for an unusable one; the window within the model)."""
        if num_layers is not None:
            limits.whole(self.window, "Window", (1, num_layers))
        settings = TraceSettings(
            kinds=self.kinds, corruption=self.corruption, replacement=self.replacement if self.corruption == "replace" else None,
            metric=self.metric, head_positions=self.head_positions, samples=self.samples, noise=self.noise,
            noise_type=self.noise_type, window=self.window, seed=self.seed, answer=self.answer.strip() or None,
        )
        settings.validate()
        return settings

    def advanced_changed(self) -> bool:
        """Does any setting under Advanced differ from the page's default?"""
        basic = {"prompt", "subject", "answer"}
        return any(getattr(self, name) != type(self).default(name) for name in self.field_names() if name not in basic)


# --- the model state an output was computed on ---------------------------------------------------------------------

@dataclass(frozen=True)
class ModelState:
    """The weights a result was computed on: the session's model and the batches of its edits (by id)."""

    model: str
    batches: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """'original weights' or 'your edits: 2 batches' (as the page header says)."""
        count = len(self.batches)
        return "original weights" if not count else f"your edits: {count} batch{'es' if count != 1 else ''}"


def model_state(session: Any) -> ModelState:
    """The weights this session's jobs use now (its model, its ledger's batches)."""
    ledger = session.ledgers.get(session.model_spec)
    return ModelState(session.model_spec, tuple(str(batch.batch_id) for batch in ledger_batches(ledger)))


@dataclass(frozen=True)
class Shown:
    """What one page shows of a trace (kept in a gr.State: one per page): the form and the complete result it made,
    "trace" or "preview", and the model state it was computed on."""

    form: TraceForm | None
    result: Any
    stage: str
    state: ModelState

    def stale(self, session: Any) -> bool:
        """Was this computed before the session's last edit, undo, reset or import?"""
        return self.state != model_state(session)


def stale_note(shown: Shown | None, session: Any, what: str = "These heatmaps") -> str:
    """The line over an output computed on other weights than the session's now ("" when it is current)."""
    if shown is None or not shown.stale(session):
        return ""
    return (
        f"⚠ {what} were computed on **{shown.state.label}**, before your last change: the model is now "
        f"**{model_state(session).label}**. Press *Refresh* to compute them again."
    )


# --- typing: tokens and the top prediction -------------------------------------------------------------------------

def highlighted_tokens(tokenizer: Any, prompt: str, subject: str) -> tuple[list[tuple[str, str]], str]:
    """The prompt's tokens, the subject's marked, and a hint when the subject can't be found."""
    if not prompt or not prompt.strip():
        return [], "Type a prompt that the model should complete, e.g. *The Eiffel Tower is located in the city of*."
    try:
        encoded = encode_prompt(tokenizer, prompt)
    except LocusError as error:
        return [], html.escape(str(error))
    begin = end = -1
    if subject and subject.strip():
        try:
            begin, end = encoded.subject_range(subject)
            hint = f"{len(encoded)} tokens; the subject is {end - begin} of them (highlighted)."
        except LocusError as error:
            hint = html.escape(str(error))
    else:
        hint = f"{len(encoded)} tokens. Now type the subject: the words of the prompt that name the thing."
    return [
        (token, "subject" if begin <= index < end else "token") for index, token in enumerate(encoded.tokens)
    ], hint


def check_subject(tokenizer: Any, form: TraceForm) -> None:
    """Refuse at once a prompt too long to trace or a subject that is not in it (None tokenizer: the job checks)."""
    form.require_text()
    if tokenizer is not None:
        encode_prompt(tokenizer, form.prompt, max_tokens=MAX_TRACE_TOKENS).subject_range(form.subject)


def prediction_work(session: Any, prompt: str, answer: str):
    """The runner's work for the top prediction: (top token, (answer's first token, its probability) or None, state)."""

    def work(job, loaded):
        probabilities = next_token_probabilities(loaded, prompt)
        top = top_tokens(loaded, probabilities, 1)[0]
        chosen = None
        if answer and answer.strip():
            ids = target_token_ids(loaded.tokenizer, answer.strip(), prompt=prompt)
            chosen = (loaded.tokenizer.decode(ids[:1]), float(probabilities[ids[0]]))
        return top, chosen, model_state(session)

    return work


def prediction_text(top: Any, chosen: tuple[str, float] | None, state: ModelState) -> str:
    """'Model's top prediction (original weights): **Paris** (70.2%).' and the typed answer's probability."""
    text = (f"Model's top prediction ({state.label}): **{html.escape(display_token(top.token))}** "
            f"({percent(top.probability)}).")
    if chosen is not None:
        text += f"  \nYour answer starts with **{html.escape(display_token(chosen[0]))}**: {percent(chosen[1])}."
    return text


def prediction_pending(session: Any, waiting: str = "") -> str:
    """The prediction line while it is computed again (never the last answer, of other weights or another prompt)."""
    text = f"*Top prediction ({model_state(session).label}): computing…*"
    return f"{text} *{html.escape(waiting)}*" if waiting else text


# --- the trace -------------------------------------------------------------------------------------------------------

def corruption_text(result: Any) -> str:
    """How the subject was corrupted in this result, in words: the noise samples, or the subject(s) put in its place."""
    settings = result.settings
    if settings.corruption == "noise":
        return f"blurred with noise ({settings.samples} sample{'s' if settings.samples != 1 else ''})"
    return corruption_words(settings.corruption, getattr(result, "replacements", []), settings.samples)


def status_markdown(result: Any, *, stage: str, state: ModelState) -> str:
    """What the status line says about a (partial) trace: the answer, its scores in the metric's unit, the corruption
    actually used, and the model state it was computed on."""
    metric = result.settings.metric
    label = html.escape(figures.result_label(result))
    head = (
        f"Answer followed: **{html.escape(display_token(result.answer))}** · {metric_name(metric)} {label}: "
        f"clean run **{figures.format_score(metric, result.high)}**, with the subject {html.escape(corruption_text(result), quote=False)} "
        f"**{figures.format_score(metric, result.low)}** · computed on **{state.label}**"
    )
    note = getattr(result, "corruption_note", "")
    if note:
        head += f"  \n*{html.escape(note[0].upper() + note[1:], quote=False)}.*"
    if stage == "preview":
        return f"{head}  \nApproximate preview shown; computing the exact trace…"
    if stage == "preview only":
        return f"{head}  \nApproximate preview (attribution patching) in {result.elapsed:.2f} s: press *Trace* for exact values."
    if stage == "exact":
        return f"{head}  \nExact trace {result.fraction_done():.0%} done (faded cells are still the preview)."
    return f"{head} · Exact trace done in {result.elapsed:.1f} s."


def stopped_markdown(shown: Shown | None, partial: Any, state: ModelState | None) -> str:
    """The status after Stop: what the heatmaps show now (the last complete result, or the partial one, labelled)."""
    text = "**Stopped.** The model was left exactly as it was."
    if shown is not None:
        what = "trace" if shown.stage == "trace" else "preview"
        return f"{text} The heatmaps show your last complete {what} (computed on **{shown.state.label}**)."
    if partial is not None and state is not None:
        done = partial.fraction_done() if not partial.approximate else 0.0
        return (f"{text} The heatmaps show the **partial** trace, {done:.0%} exact when stopped (faded cells are the "
                f"preview's estimates), computed on **{state.label}**.")
    return f"{text} Nothing was computed yet."


def trace_work(session: Any, prompt: str, subject: str, settings: TraceSettings):
    """The runner's work of a trace: the preview, then the exact cells as they finish (items ("preview"|"exact",
    result, state)); returns (preview, result, state)."""

    def work(job, loaded):
        state = model_state(session)
        job.progress(0.0, "Approximate preview…")
        preview = preview_trace(loaded, prompt, subject, settings)
        job.emit(("preview", preview, state))
        final, filled = None, -1.0
        with contextlib.closing(trace_stream(loaded, prompt, subject, settings)) as stream:
            for update in stream:
                final = update.result
                job.progress(update.fraction, f"Exact trace: {update.message}")
                if update.result.fraction_done() != filled:  # new cells (not only a block run): a new heatmap
                    filled = update.result.fraction_done()
                    job.emit(("exact", copy.deepcopy(update.result), state))
                job.safe_point()  # other visitors' short jobs may run here
        return preview, final, state

    return work


def preview_work(session: Any, prompt: str, subject: str, settings: TraceSettings):
    """The runner's work of the preview alone: (preview, state)."""
    return lambda job, loaded: (preview_trace(loaded, prompt, subject, settings), model_state(session))


def heatmaps(result: Any, preview: Any = None, state: ModelState | None = None) -> dict[str, Any]:
    """{kind: figure} for hidden, mlp, attn and heads; each caption says the model state it was computed on."""
    drawn = {kind: figures.trace_heatmap(result, kind, preview=preview) for kind in KINDS}
    drawn[HEADS] = figures.heads_heatmap(result, preview=preview)
    if state is not None:
        for figure in drawn.values():
            figures.add_caption_note(figure, f"Computed on {state.label}.")
    return drawn


def has_heads(result: Any) -> bool:
    return bool(getattr(result, "head_scores", None))


def result_dict(result: Any, state: ModelState) -> dict:
    """The result as JSON, with the model state it was computed on."""
    return dict(result.to_dict(), model_state=state.label, model_state_batches=list(state.batches))


# --- the re-trace (Test tab) -----------------------------------------------------------------------------------------

def _same_trace(original: Any, last: Any, settings: TraceSettings) -> bool:
    """Is `original` a trace of the unedited model for the same prompt, subject, answer and settings?"""
    if (original.prompt, original.subject, original.answer) != (last.prompt, last.subject, last.answer):
        return False
    mine, wanted = original.settings.to_dict(), settings.to_dict()
    for name in ("answer", "counterfactual_answer"):
        mine.pop(name, None)
        wanted.pop(name, None)
    return mine == wanted and (last.settings.metric != "logit-diff" or original.contrast == last.contrast)


def retrace_work(session: Any, last: TraceResult):
    """The runner's work of the re-trace: the last trace on the original weights (reused when the session has it) and
    with the session's edits, following the same answer (and, for a logit difference, the same a'); returns
    (before, after, state of after, whether `before` was reused)."""
    settings = copy.deepcopy(last.settings)
    settings.answer = last.answer  # follow the same answer token before and after the edit
    if settings.metric == "logit-diff" and last.contrast:
        settings.counterfactual_answer = last.contrast  # the same a', so the two differences compare
    original = session.original_trace
    reuse = original is not None and _same_trace(original, last, settings)

    def work(job, loaded):
        def part(offset: float, label: str):
            return derived(job.progress, lambda fraction, message: job.progress(offset + 0.5 * fraction, f"{label}: {message}"))

        before = original if reuse else trace(loaded, last.prompt, last.subject, settings, progress=part(0.0, "Original model"))
        with session.applied(loaded):
            state = model_state(session)
            after = trace(loaded, last.prompt, last.subject, settings, progress=part(0.5, "With your edits"))
        return before, after, state, reuse

    return work


def retrace_summary(before: Any, after: Any, state: ModelState) -> str:
    """'Following **Paris**: clean probability p(Paris) 70.2% before, 0.3% after your edits (your edits: 1 batch).'
    in the metric's unit."""
    metric = before.settings.metric
    return (
        f"Following **{html.escape(display_token(before.answer))}**: clean {metric_name(metric)} "
        f"{html.escape(figures.result_label(before))} {figures.format_score(metric, before.high)} before, "
        f"{figures.format_score(metric, after.high)} after your edits (after: computed on **{state.label}**; "
        f"before: original weights)."
    )


def difference_figures(before: Any, after: Any, state: ModelState) -> dict[str, Any]:
    """{kind: after-minus-before heatmap} for hidden, mlp and attn, captions naming the model states."""
    drawn = {kind: figures.difference_heatmap(before, after, kind) for kind in KINDS}
    for figure in drawn.values():
        figures.add_caption_note(figure, f"After: computed on {state.label}; before: original weights.")
    return drawn


# --- the address of a trace ----------------------------------------------------------------------------------------

QUERY_NAMES = {"head_positions": "heads"}  # field -> query parameter, where they differ


def query_of(form: TraceForm) -> str:
    """The query string of a link to these settings: the prompt, subject and answer, and what differs from the
    defaults (never any edit)."""
    pairs = []
    for name in TraceForm.field_names():
        value = getattr(form, name)
        if name not in ("prompt", "subject") and value == TraceForm.default(name):
            continue
        pairs.append((QUERY_NAMES.get(name, name), ",".join(value) if isinstance(value, tuple) else str(value)))
    return urllib.parse.urlencode(pairs)


def form_of_query(query: str | Mapping[str, str]) -> tuple[TraceForm | None, list[str]]:
    """The form a link's query string names (None when it names no trace setting) and a message per value that could
    not be used (that value is left at its default)."""
    params = dict(urllib.parse.parse_qsl(query.lstrip("?"))) if isinstance(query, str) else dict(query)
    by_param = {QUERY_NAMES.get(name, name): name for name in TraceForm.field_names()}
    values = {}
    for param, text in params.items():
        name = by_param.get(param)
        if name is None:
            continue  # another parameter of the page (e.g. Gradio's __theme)
        values[name] = [kind for kind in text.split(",") if kind] if name == "kinds" else text
    if not values:
        return None, []
    problems = []
    fields = {item.name: item for item in dataclasses.fields(TraceForm)}
    checked = {}
    for name, value in values.items():
        try:
            checked[name] = fields[name].metadata[forms.CHECK](value)
        except InputError as error:
            problems.append(f"{param_of(name)}: {error}")
    try:
        return TraceForm(**checked), problems
    except InputError as error:  # settings that do not go together
        problems.append(str(error))
        kept = {name: value for name, value in checked.items() if name in ("prompt", "subject", "answer")}
        return TraceForm(**kept), problems


def param_of(name: str) -> str:
    return QUERY_NAMES.get(name, name)
