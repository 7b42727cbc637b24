"""A job's controls: its button, a Stop button, and the line under them, the job's one place for words.

The line (`JobLine`) says, while the job waits or runs, ONE progress line (ui/runner.py's ProgressView: the
place in line, then one share done beside one bar, the stage, the time since the job started and one
estimate of the time left; never blank, never backwards); afterwards, what happened: "Done in 38 s",
"Stopped …" (a stop is not an error: no red toast, no "Error" badge, the results on screen untouched), or the
plain message of a refused input or a failure, which stays there until the button is pressed again. Gradio's
own progress overlay (its timer restarts at every update, it shows its own estimate) is hidden.

How a tab uses it:

    run, stop, line = job_controls("Compute averages", "avg-run", "avg")
    event = wire(ctx, line, run.click, fn, inputs, outputs, api_name="average", **MODEL_EVENTS)
    wire_stop(ctx, stop, line)

`fn` is a `friendly` event function (plain or generator) as before; its parameter `progress`, if it has one,
receives a runner.LineProgress, to pass on to `ctx.follow(job, progress)` / `ctx.run(..., progress=progress)`.
The event's outputs are `outputs + [line]`: the line is left out of the API (`JobLine.skip_api`), so API callers
see the same outputs and the same errors (gr.Error) as without it; only the page's toast is left out, since the
words stand on the line. A plain handler runs beside the event (its own thread) so the line moves while it waits.
A handler that wants to label a partial result on a stop catches core.errors.OperationCancelled from
`ctx.follow`, yields its labelled outputs and raises again.
"""

from __future__ import annotations

import contextvars
import functools
import html
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import gradio as gr

from ui.errors import Stopped, friendly
from ui.runner import LineProgress, ProgressView, duration

TICK_S = 0.5  # a plain handler's line is redrawn this often while it runs

# Sliders: Gradio's slider clamps a typed value to its range without a word (100000 samples became 50). This
# announces it next to the slider, until its next change. Installed once per page by the first job line.
SLIDER_GUARD_JS = """
if (!window.__locusSliderGuard) {
  window.__locusSliderGuard = true;
  const announce = (input) => {
    const block = input.closest('.block');
    if (!block) return;
    block.querySelectorAll('.locus-clamp-note').forEach((note) => note.remove());
    const value = parseFloat(input.value), low = parseFloat(input.min), high = parseFloat(input.max);
    if (!Number.isFinite(value) || !(value < low || value > high)) return;
    const used = value > high ? high : low;
    const label = (block.querySelector('[data-testid="block-info"]') || {}).textContent || 'This value';
    const note = document.createElement('div');
    note.className = 'locus-clamp-note';
    note.setAttribute('role', 'status');
    note.style.cssText = 'color: var(--body-text-color); background: var(--color-accent-soft); padding: 2px 6px; ' +
      'margin-top: 4px; border-radius: 4px; font-size: 0.9em;';
    note.textContent = `${label.trim()} goes from ${low} to ${high}: ${input.value} is out of range, so ${used} is used.`;
    block.appendChild(note);
  };
  const check = (event) => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.matches('input[data-testid="number-input"]')) announce(input);
  };
  document.addEventListener('change', check, true);
  document.addEventListener('keydown', (event) => { if (event.key === 'Enter') check(event); }, true);
}
"""

LINE_CSS = """
.job-line { display: flex; align-items: center; gap: 0.6em; min-height: 2.2em; padding: 0.2em 0; }
.job-bar { flex: 0 0 12em; height: 0.7em; border-radius: 0.35em; background: var(--border-color-primary); overflow: hidden; }
.job-bar-fill { height: 100%; background: var(--color-accent); }
.job-line.failed { color: var(--error-text-color, #b91c1c); font-weight: 600; }
.job-line.stopped, .job-line.done { color: var(--body-text-color-subdued); }
"""


class PageOnly(gr.HTML):
    """HTML for the page's eyes only: left out of the API (`skip_api`), so an event that also writes it gives API
    callers the same outputs with or without it."""

    @property
    def skip_api(self) -> bool:
        return True


class JobLine(PageOnly):
    """The line under a job's buttons (progress, then what happened)."""


class JobControls(NamedTuple):
    run: gr.Button
    stop: gr.Button
    line: JobLine  # progress while the job runs; then done, stopped, or the message of a refusal or failure


def job_line(prefix: str) -> JobLine:
    """A job's line (elem_id `{prefix}-progress`), empty until its button is pressed."""
    return JobLine("", elem_id=f"{prefix}-progress", elem_classes=["progress-line"], css_template=LINE_CSS,
                   js_on_load=SLIDER_GUARD_JS, apply_default_css=True)


def job_controls(label: str, run_id: str, prefix: str, variant: str = "primary") -> JobControls:
    """`label` button (elem_id `run_id`) and Stop (`{prefix}-stop`) in a row, then the line (`{prefix}-progress`)."""
    with gr.Row():
        run = gr.Button(label, variant=variant, elem_id=run_id, scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    return JobControls(run, stop, job_line(prefix))


# --- what the line says ---------------------------------------------------------------------------------------------

def progress_html(view: ProgressView | None) -> str:
    """The running job's line: a bar and its one percentage, the stage, elapsed and left; the place in line while it
    waits. Never empty."""
    if view is None:
        return '<div class="job-line running" role="status">Starting…</div>'
    if view.waiting is not None:
        return f'<div class="job-line waiting" role="status">⏳ {html.escape(view.waiting)}</div>'
    percent = view.percent
    return (
        f'<div class="job-line running" role="status" data-fraction="{view.fraction:.4f}">'
        f'<div class="job-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{percent}">'
        f'<div class="job-bar-fill" style="width: {percent}%"></div></div>'
        f'<span class="job-text">{html.escape(view.text())}</span></div>'
    )


def done_html(seconds: float, message: str | None = None) -> str:
    """The line after the job: 'Done in 38 s.', or `message` (Markdown-safe text from the handler) and the time."""
    if message:
        return f'<div class="job-line done" role="status">✓ {html.escape(message)} ({duration(seconds)})</div>'
    return f'<div class="job-line done" role="status">Done in {duration(seconds)}.</div>'


def stopped_html(seconds: float, message: str) -> str:
    """The line after a Stop: neutral, like a finished job's, with the time it ran."""
    return f'<div class="job-line stopped" role="status">⏹ {message} ({duration(seconds)} after the start)</div>'


def failed_html(message: str) -> str:
    """A refusal or failure (the message of a gr.Error, already HTML-safe) in words next to the button."""
    return f'<div class="job-line failed" role="alert">⚠ {message}</div>'


# --- wiring ---------------------------------------------------------------------------------------------------------

def _as_values(values: Any, count: int) -> tuple:
    """A handler's return or yield as a tuple of `count` values (a single gr.skip() skips them all)."""
    if count == 1:
        return (values,)
    if isinstance(values, dict) and values == gr.skip():
        return tuple(gr.skip() for _ in range(count))
    values = tuple(values)
    if len(values) != count:
        raise TypeError(f"the handler gave {len(values)} values for {count} outputs")
    return values


class _Final(NamedTuple):
    """A plain handler's outputs, once it returned."""

    values: tuple


def _beside(handler: Callable[..., Any], args: tuple, kwargs: dict, sink: LineProgress, count: int) -> Iterator[tuple]:
    """Run a plain handler in a thread of its own, yielding (skips..., line) every TICK_S while it runs, then its outputs."""
    outcome: dict[str, Any] = {}
    finished = threading.Event()
    context = contextvars.copy_context()  # Gradio's request context (gr.Info, gr.Warning) goes along

    def run() -> None:
        try:
            outcome["value"] = context.run(handler, *args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - raised again on the event's thread
            outcome["error"] = error
        finally:
            finished.set()

    threading.Thread(target=run, name=f"locus-{handler.__name__}", daemon=True).start()
    skips = tuple(gr.skip() for _ in range(count))
    try:
        while not finished.wait(TICK_S):
            yield (*skips, progress_html(sink.view))
    except GeneratorExit:  # the page went away: stop its job (the handler's follow then ends)
        if sink.job is not None:
            sink.job.cancel()
        raise
    if "error" in outcome:
        raise outcome["error"]
    yield _Final(_as_values(outcome["value"], count))  # drawn once, with the line's last word (job_event)


def job_event(handler: Callable[..., Any], count: int, done_from: int | None = None) -> Callable[..., Iterator[tuple]]:
    """The event function of a wired job: `handler`'s outputs (`count` of them) followed by its line.

    Generators stream as before, each yield with the line redrawn; a plain handler runs beside the event. A stop
    ends the event normally, its line saying so; a gr.Error puts its words on the line and is raised again, without
    its toast, for API callers. At the end the line says "Done in …", or, with `done_from`, the text of that
    output (a message such as "Undid batch b1.") and the time taken.
    """
    handler = friendly(handler)  # (a friendly handler's gr.Error passes through unchanged)
    streaming = inspect.isgeneratorfunction(handler)
    signature = inspect.signature(handler)
    takes_progress = "progress" in signature.parameters
    skips = tuple(gr.skip() for _ in range(count))

    @functools.wraps(handler)
    def event(*args: Any, **kwargs: Any) -> Iterator[tuple]:
        started = time.monotonic()
        sink = LineProgress()
        if takes_progress:
            kwargs["progress"] = sink
        last: tuple = skips
        try:
            yield (*skips, progress_html(None))  # at once: the line is never blank, Gradio's own timer never shown
            if streaming:
                for values in handler(*args, **kwargs):
                    last = _as_values(values, count)
                    yield (*last, progress_html(sink.view))
            else:
                for values in _beside(handler, args, kwargs, sink, count):
                    if isinstance(values, _Final):
                        last = values.values  # yielded once below, with "Done": never drawn twice
                        break
                    yield values
        except Stopped as stopped:
            yield (*last, stopped_html(time.monotonic() - started, stopped.message))
            return
        except gr.Error as error:
            yield (*skips, failed_html(error.message))
            error.visible = False  # the words stand next to the button; API callers still get the error
            raise
        said = last[done_from] if done_from is not None else None
        # A generator's last values again: an API caller's result is the event's last yield (the page sees them
        # unchanged, a moment after the first time); a plain handler's values are drawn here, only once.
        yield (*last, done_html(time.monotonic() - started, said if isinstance(said, str) else None))

    parameters = [parameter for name, parameter in signature.parameters.items() if name != "progress"]
    event.__signature__ = signature.replace(parameters=parameters)  # Gradio passes no gr.Progress: the line is ours
    del event.__wrapped__  # (inspect.signature would follow it back to the handler's)
    return event


def wire(ctx: Any, line: JobLine, trigger: Callable[..., Any], handler: Callable[..., Any], inputs: list, outputs: list,
         **options: Any) -> Any:
    """`trigger(handler, inputs, outputs)` (e.g. `button.click`) with the job's words on `line`: returns the event."""
    options.pop("show_progress_on", None)
    done_from = options.pop("done_from", None)
    return trigger(job_event(handler, len(outputs), done_from), inputs, [*outputs, line], show_progress="hidden", **options)


def wire_stop(ctx: Any, stop: gr.Button, line: JobLine) -> Any:
    """The Stop button: this visitor's long jobs stop at their next step; `line` says what happened."""
    return stop.click(ctx.bind(stop_jobs_line), [ctx.session], [line], queue=False, api_visibility="private")


def stop_jobs_line(ctx: Any, session: Any) -> str:
    """The Stop button's answer on the line (the stopped job's own line says "Stopped" when it has ended)."""
    return f'<div class="job-line stopped" role="status">{html.escape(ctx.stop(ctx.session_of(session)))}</div>'
