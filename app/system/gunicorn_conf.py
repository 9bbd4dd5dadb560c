"""gunicorn settings of the api, for `make run` and the Docker image
(``gunicorn -c python:app.system.gunicorn_conf wsgi:app``).

With several worker processes, each would count its own requests and /metrics would show whichever
process answered the scrape. Prometheus' multiprocess mode fixes that: every process writes its
samples under ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory per api start unless set) and
/metrics sums them; a worker that exits is marked dead so its live gauges go away. That variable
is prometheus_client's own switch (``config.ensure_prometheus_multiproc_dir``), set here in the
master before the workers fork.

gunicorn's own lines (start-up, workers booting and exiting, errors) go through the handler of
app/logs.py, so they are JSON like every other line (text with ``LOG_FORMAT=text``), at
``LOG_LEVEL``.
"""
import os
import shutil

from gunicorn.glogging import Logger

from config import ensure_prometheus_multiproc_dir, settings

# set in the master before the workers fork (and before any of them imports prometheus_client)
ensure_prometheus_multiproc_dir()

loglevel = settings.LOG_LEVEL.lower()

# No control socket (``gunicornc``): its default path, ~/.gunicorn/gunicorn.ctl, is one per user,
# so every api instance started by that user (a second `make run`, the test suite) would take it
# over from the others, and remove it when it stops. Nothing here uses it.
control_socket_disable = True


class JsonLogger(Logger):
    """gunicorn's logger, writing where every other logger of the process writes (stdout, JSON).
    A log file given to gunicorn (``--error-logfile``, ``--access-logfile``) is kept."""

    def setup(self, cfg):
        super().setup(cfg)
        from app.logs import configure_logging

        configure_logging("api")
        for log, target in ((self.error_log, cfg.errorlog), (self.access_log, cfg.accesslog)):
            if target == "-":
                for handler in [h for h in log.handlers if getattr(h, "_gunicorn", False)]:
                    log.removeHandler(handler)
                log.propagate = True


logger_class = JsonLogger


def on_starting(server):
    """Samples of an earlier run would be added to this one's: start from an empty directory."""
    path = ensure_prometheus_multiproc_dir()
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
