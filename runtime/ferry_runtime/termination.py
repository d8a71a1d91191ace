"""The Kubernetes termination message: the last words `kubectl describe pod` shows for a container."""

from __future__ import annotations

from pathlib import Path

TERMINATION_LOG = Path("/dev/termination-log")


def write_termination_message(message: str, path: Path = TERMINATION_LOG) -> None:
    # Outside a pod the file is absent or not writable; the message still goes to stderr via logging.
    try:
        with path.open("w") as file:
            file.write(message[:4000])
    except OSError:
        pass
