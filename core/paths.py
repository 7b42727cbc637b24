"""Where Locus's packaged data lies: assets/ in a checkout, locus/assets in an installed wheel."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" if (ROOT / "assets").is_dir() else ROOT / "locus" / "assets"
