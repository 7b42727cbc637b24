"""`python -m editor ...`: see editor/cli.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from editor.cli import main  # noqa: E402

raise SystemExit(main())
