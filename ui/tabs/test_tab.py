"""Test tab: before vs after for any prompt; checks of every edit; CounterFact metrics; re-trace."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui import captions
from ui.context import MODEL_QUEUE, AppContext
from ui.display import display_token, label_value, percent
from ui.errors import friendly
from ui.session import SessionState


@dataclass
class TestTab:
    prompt: gr.Textbox
    before_label: gr.Label
    after_label: gr.Label
    before_text: gr.Textbox
    after_text: gr.Textbox
    compare: gr.Button
    compare_event: Any
    extra: dict[str, Any]


def predictions_dict(predictions: list[Any], generation: str) -> dict:
    return {"top": [p.to_dict() for p in predictions], "generation": generation}


def build(ctx: AppContext) -> TestTab:
    extra: dict[str, Any] = {}
    with gr.Tab("Test", id="test"):
        gr.Markdown(captions.TEST_COMPARE)
        with gr.Row():
            prompt = gr.Textbox(
                label="Any prompt", value="The Eiffel Tower is located in the city of", elem_id="test-prompt", scale=4
            )
            top_k = gr.Slider(1, 20, value=5, step=1, label="Top-k", scale=1, elem_id="test-topk")
            length = gr.Slider(1, 60, value=20, step=1, label="Generated tokens", scale=1)
        compare = gr.Button("Compare original and edited", variant="primary", elem_id="test-compare")
        with gr.Row(equal_height=True):
            with gr.Column():
                gr.Markdown("### Original model")
                before_label = gr.Label(label="Next token (original)", elem_id="test-before-top", show_label=False)
                before_text = gr.Textbox(label="Greedy continuation (original)", lines=3, elem_id="test-before-text")
            with gr.Column():
                gr.Markdown("### With your edits")
                after_label = gr.Label(label="Next token (edited)", elem_id="test-after-top", show_label=False)
                after_text = gr.Textbox(label="Greedy continuation (edited)", lines=3, elem_id="test-after-text")
        summary = gr.Markdown(elem_id="test-summary")
        with gr.Accordion("Raw result (JSON)", open=False):
            compare_json = gr.JSON(elem_id="test-json")
        extra.update(summary=summary, compare_json=compare_json)

    @friendly
    def run_compare(prompt_text: str, k: float, new_tokens: float, session: SessionState | None, progress=gr.Progress()):
        from tracer.errors import InputError

        session = ctx.session_of(session)
        if not prompt_text or not prompt_text.strip():
            raise InputError("The prompt is empty: type a sentence that the model should complete.")
        count, tokens = int(k), int(new_tokens)

        def work(job, loaded):
            from tracer.predict import generate_greedy, predict_next_tokens

            job.progress(0.1, "Original model…")
            before = (predict_next_tokens(loaded, prompt_text, count), generate_greedy(loaded, prompt_text, tokens))
            job.progress(0.5, "With your edits…")
            with session.applied(loaded):
                after = (predict_next_tokens(loaded, prompt_text, count), generate_greedy(loaded, prompt_text, tokens))
            return before, after

        before, after = ctx.run(session, work, name="compare", edited=False)
        edited = session.has_edits()
        if not edited:
            note = "You have no edits yet, so both sides show the original model. Apply an edit on the **Edit** tab."
        elif before[0][0].token != after[0][0].token:
            note = (
                f"Your edits change the top prediction: **{html.escape(display_token(before[0][0].token))}** "
                f"({percent(before[0][0].probability)}) → **{html.escape(display_token(after[0][0].token))}** "
                f"({percent(after[0][0].probability)})."
            )
        else:
            note = (
                f"Same top prediction before and after: **{html.escape(display_token(after[0][0].token))}** "
                f"({percent(before[0][0].probability)} → {percent(after[0][0].probability)})."
            )
        data = {
            "prompt": prompt_text,
            "edited": edited,
            "before": predictions_dict(*before),
            "after": predictions_dict(*after),
        }
        return (
            label_value(before[0]), label_value(after[0]), before[1], after[1], note, data, session,
        )

    compare_event = compare.click(
        run_compare,
        [prompt, top_k, length, ctx.session],
        [before_label, after_label, before_text, after_text, summary, compare_json, ctx.session],
        api_name="predict",
        concurrency_id=MODEL_QUEUE,
    )
    prompt.submit(
        run_compare,
        [prompt, top_k, length, ctx.session],
        [before_label, after_label, before_text, after_text, summary, compare_json, ctx.session],
        api_visibility="private",
        concurrency_id=MODEL_QUEUE,
    )
    return TestTab(prompt, before_label, after_label, before_text, after_text, compare, compare_event, extra)
