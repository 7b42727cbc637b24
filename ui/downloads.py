"""Files for the download buttons, written to the session's temporary folder (the last result's only)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tracer import figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "trace"


def trace_downloads(result: Any, folder: Path, extra: dict | None = None) -> dict[str, str]:
    """JSON (with `extra`'s keys too), CSV and standalone interactive HTML of a trace in `folder`:
    {"json": path, "csv": path, "html": path}."""
    stem = f"trace-{_slug(result.subject)}"
    paths = {"json": folder / f"{stem}.json", "csv": folder / f"{stem}.csv", "html": folder / f"{stem}.html"}
    paths["json"].write_text(json.dumps({**result.to_dict(), **(extra or {})}, indent=1), encoding="utf-8")
    paths["csv"].write_text(result.to_csv(), encoding="utf-8")
    paths["html"].write_text(figures.trace_html(result), encoding="utf-8")
    return {key: str(path) for key, path in paths.items()}
