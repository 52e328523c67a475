"""The app for the public-mode benches (``bench/load.py``, ``bench/class.py``, started by
``bench/public_http.py``): ``app.py`` in public mode, with the ``/status`` handler timed.

Each call's own time in the server (the handler, from its arguments to its answer) is kept
in memory and written as JSON to ``$INDISTILL_LOAD_TIMES`` when the process is asked to stop
(SIGTERM), so the benchmark can set the server's time per poll beside what its clients saw.
Not part of the app: the product's ``/status`` is untouched when this file is not the entry point.
Its imports of the app stay under ``__main__``: a worker process (``app/worker.py``) imports this
entry script again, and should not pay for Gradio.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMES: list[float] = []
_LOCK = threading.Lock()


def timed(fn):
    @functools.wraps(fn)  # the name, signature and docstring make the endpoint: keep them
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _LOCK:
                TIMES.append(time.perf_counter() - t)
    return wrapper


def dump_and_exit(*_):
    with _LOCK:
        Path(os.environ["INDISTILL_LOAD_TIMES"]).write_text(json.dumps(TIMES))
    os._exit(0)


if __name__ == "__main__":
    from app.ui import api
    api.status = timed(api.status)  # read by app.ui.layout when it wires the endpoints
    signal.signal(signal.SIGTERM, dump_and_exit)
    from app.ui.main import launch
    launch(prevent_thread_lock=True)
    threading.Event().wait()
