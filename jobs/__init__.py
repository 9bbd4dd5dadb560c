"""Dramatiq actors, one module per domain (``jobs/<domain>.py``), all imported here.

The broker is set first (ARCHITECTURE rule 5); every module in this package is then imported so a
worker of any pool knows every actor by name.
"""
import importlib
import pkgutil

import app.models  # noqa: F401  (an entry point: registers every table)
from workers.broker import get_broker

get_broker()  # the configured broker, set before any actor is declared

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
