"""`python -m locus ...`: the `locus` command (locus/cli.py)."""

from locus.cli import main

raise SystemExit(main())
