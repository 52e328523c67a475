"""InDistill Studio engine: data, KD losses, InDistill warm-up, trainer, evaluation.

Importable without Gradio; the web UI lives in :mod:`app.ui` and only reads from here.
"""
__version__ = "0.1.0"
