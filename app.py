"""Locus app: `python app.py [--model M ...] [--host 127.0.0.1] [--port 7860] ...` (the same as `locus app`).

Everything is in ui/serve.py; `python app.py --help` lists the options.
"""

from ui.serve import main

if __name__ == "__main__":
    main()
