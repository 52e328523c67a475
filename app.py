"""InDistill Studio: ``python app.py`` serves the Gradio app (nothing trains at import).

Respects GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Hugging Face Spaces sets them);
INDISTILL_RUNS (run folders, default runs/) and INDISTILL_MAX_JOBS (concurrent
trainings, default 1).
"""
from app.ui.main import launch

if __name__ == "__main__":
    launch()
