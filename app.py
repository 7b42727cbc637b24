"""Locus app entry point: `python app.py [--model M ...] [--device D] [--host 127.0.0.1] [--port 7860] [--share]`.

Placeholder until the UI issue lands: serves a minimal page with the model's next-token prediction.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the Locus app.")
    parser.add_argument("--model", action="append", help="model spec (repeatable); default: embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public Gradio share link (off by default)")
    arguments = parser.parse_args()

    import gradio as gr

    from tracer.loading import load_model
    from tracer.predict import predict_next_tokens

    loaded = load_model((arguments.model or ["embedded"])[0], device=arguments.device)

    def predict(prompt: str) -> str:
        return "\n".join(f"{p.token!r}: {p.probability:.1%}" for p in predict_next_tokens(loaded, prompt))

    with gr.Blocks(title="Locus") as demo:
        gr.Markdown(f"# Locus\nModel: {loaded.name}")
        prompt = gr.Textbox(label="Prompt", value="The Eiffel Tower is located in the city of")
        output = gr.Textbox(label="Next tokens")
        gr.Button("Predict").click(predict, prompt, output, api_name="predict")
    demo.launch(server_name=arguments.host, server_port=arguments.port, share=arguments.share)


if __name__ == "__main__":
    main()
