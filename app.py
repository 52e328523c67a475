"""InDistill Studio: ``python app.py`` serves the Gradio app (nothing trains at import).

Respects GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Hugging Face Spaces sets them);
INDISTILL_RUNS (run folders, default runs/) and INDISTILL_MAX_JOBS (concurrent
trainings, default 1). The import stays under ``__main__``: a run's worker process imports
this script again, and must not import Gradio for nothing.
"""

if __name__ == "__main__":
    from app.ui.main import launch
    launch()
