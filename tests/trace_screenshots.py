"""Screenshots of the Trace tab after a trace, at 1280x800 and 1920x1080, light and dark (docs/screenshots).

Run: `python -m tests.trace_screenshots docs/screenshots` (the embedded model, a real server, Debian's Chromium). It
prints where the three heatmaps sit on each page, to check they are above the fold.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path

from tests import app_harness

SIZES = ((1280, 800), (1920, 1080))
LINK = {"prompt": "The Eiffel Tower is located in the city of", "subject": "Eiffel Tower", "samples": "1"}


def shoot(folder: Path) -> dict[str, dict]:
    """Take the four screenshots into `folder`; {page: {kind: bounding box}}."""
    from playwright.sync_api import expect

    from core.loading import load_model

    folder.mkdir(parents=True, exist_ok=True)
    app = app_harness.start_app(load_model("embedded", device="cpu"))
    browser = app_harness.shared_browser()
    expect.set_options(timeout=300_000)
    boxes = {}
    for width, height in SIZES:
        for theme in ("light", "dark"):
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            query = dict(LINK, **({"__theme": "dark"} if theme == "dark" else {}))
            page.goto(f"{app.url}/?{urllib.parse.urlencode(query)}")
            expect(page.locator("#model-line")).to_contain_text("Model:")
            page.click("#trace-run")
            expect(page.locator("#trace-status")).to_contain_text("Exact trace done")
            page.wait_for_timeout(2500)  # plotly draws after the last update
            boxes[f"{width}x{height}-{theme}"] = {
                kind: page.locator(f"#trace-plot-{kind}").bounding_box() for kind in ("hidden", "mlp", "attn")
            }
            page.screenshot(path=str(folder / f"trace-{width}-{theme}.png"))
            context.close()
    return boxes


if __name__ == "__main__":
    print(json.dumps(shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")), indent=1))
