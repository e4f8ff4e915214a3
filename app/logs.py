"""Logs for incidents: one JSON object per line (``NSX_LOG_FORMAT=json``, the default for ``nsx
serve``), with the fields a log pipeline filters on — ``event``, ``run_id``, ``step``, ``module``,
``tenant``, ``status`` — as keys of their own. Keys are never logged: a request is known by its
tenant's name."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

__all__ = ["FIELDS", "JsonFormatter", "configure"]

# The ``extra`` fields a record may carry, written as top-level keys (``step_module`` as "module":
# a LogRecord has a ``module`` of its own, the Python module that logged).
FIELDS = ("event", "run_id", "step", "step_module", "pack", "tenant", "status", "reason", "ms", "steps", "hits",
          "error")
_KEY = {"step_module": "module"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                doc[_KEY.get(name, name)] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(fmt: str = "json", level: str = "INFO") -> None:
    """The root logger writes to stderr in ``fmt`` ("json" or "text"); uvicorn's loggers go through
    it too, so every line of a served process has one shape."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
