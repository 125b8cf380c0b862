"""Secrets systemd hands the gateway with ``LoadCredential=``: one file per secret in
``$CREDENTIALS_DIRECTORY``, readable by this service alone, so a secret is never in the config
file, the environment or a process argument."""

from __future__ import annotations

import os
from pathlib import Path


def read(name: str) -> str | None:
    """The credential ``name`` (surrounding whitespace stripped), or None when the service was
    given none of that name."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    if not path.is_file():
        return None
    return path.read_text().strip()
