"""InDistill Studio launcher. Until the web UI lands this runs the CLI quick preset:
``python app.py`` == ``python -m app.cli run --preset quick-cpu``."""
import sys

from app.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "--preset", "quick-cpu", *sys.argv[1:]]))
