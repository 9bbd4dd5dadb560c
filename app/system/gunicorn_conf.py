"""gunicorn settings of the api, for `make run` and the Docker image
(``gunicorn -c python:app.system.gunicorn_conf wsgi:app``).

With several worker processes, each would count its own requests and /metrics would show whichever
process answered the scrape. Prometheus' multiprocess mode fixes that: every process writes its
samples under ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory per api start unless set) and
/metrics sums them; a worker that exits is marked dead so its live gauges go away.
"""
import os
import shutil
import tempfile

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # set in the master before the workers fork (and before any of them imports prometheus_client)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="wa-prometheus-")


def on_starting(server):
    """Samples of an earlier run would be added to this one's: start from an empty directory."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
