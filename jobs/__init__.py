"""Dramatiq actors, one module per domain (``jobs/<domain>.py``), all imported here.

The broker is set first (ARCHITECTURE rule 5); every module in this package is then imported so a
worker of any pool knows every actor by name.
"""
import importlib
import pkgutil

import workers.broker  # noqa: F401  (must come first)

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    importlib.import_module(f"{__name__}.{_info.name}")
