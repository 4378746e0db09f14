"""Content-addressed JSON cache for expensive calls (teacher LLM answers, judge verdicts).

The key is the SHA-256 of the canonical JSON of the full request (backend, model identity,
messages, decoding settings, seed), so a re-run with the same request is free and returns
exactly the same answer; any change to the request is a miss. Writes are temp + rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def request_key(request: Any) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class JsonCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: Any) -> Any | None:
        p = self._path(request_key(request))
        try:
            return json.loads(p.read_text())["response"]
        except (OSError, json.JSONDecodeError, KeyError):
            return None

    def put(self, request: Any, response: Any) -> None:
        p = self._path(request_key(request))
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"request": request, "response": response}, f, ensure_ascii=False)
        os.replace(tmp, p)
