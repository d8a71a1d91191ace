"""TLS for the REST and gRPC listeners, from a kubernetes.io/tls Secret's files, reloaded when they change.

`--tls-dir DIR` holds `tls.crt` (the certificate chain) and `tls.key`: the layout of a Secret of type
kubernetes.io/tls mounted as a volume, which is what cert-manager's Certificate writes. cert-manager
renews before expiry by rewriting the Secret; the kubelet swaps the mounted files atomically, and
`CertificateReloader` notices within a second and loads the new pair into the listeners' live contexts,
so connections made after that get the new certificate and open connections are not cut. A pair that
does not load (a key that does not match, a half-written file) is logged and the old one kept.

REST offers ALPN `http/1.1`, gRPC `h2` (gRPC clients require it). TLS 1.2 is the lowest version accepted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

CERTIFICATE: Final = "tls.crt"
PRIVATE_KEY: Final = "tls.key"
_CHECK_SECONDS: Final = 1.0


def server_context(alpn: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([alpn])
    return context


class CertificateReloader:
    """Keeps the listeners' server contexts loaded with the newest certificate pair in a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.contexts = {"rest": server_context("http/1.1"), "grpc": server_context("h2")}
        self._signature: tuple[tuple[int, int, int], ...] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.reloads = 0
        self.load()  # the first pair must load: serving without it would be serving the wrong thing

    @property
    def files(self) -> tuple[Path, Path]:
        return self.directory / CERTIFICATE, self.directory / PRIVATE_KEY

    def _current_signature(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(
            (stat.st_ino, stat.st_mtime_ns, stat.st_size) for stat in (path.stat() for path in self.files)
        )

    def load(self) -> None:
        """Load the pair into every context; raises (ssl.SSLError, OSError) when it does not load."""
        signature = self._current_signature()
        certificate, key = (str(path) for path in self.files)
        # Loaded into a scratch context first: a live context is only touched by a pair known to load.
        server_context("h2").load_cert_chain(certificate, key)
        for context in self.contexts.values():
            context.load_cert_chain(certificate, key)
        self._signature = signature

    def reload_if_changed(self) -> bool:
        try:
            if self._current_signature() == self._signature:
                return False
            self.load()
        except (OSError, ssl.SSLError) as error:
            log.error("cannot load the TLS pair in %s: %s; keeping the one before", self.directory, error)
            return False
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.directory)
        return True

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        def check() -> None:
            self.reload_if_changed()
            self._timer = loop.call_later(_CHECK_SECONDS, check)

        self._timer = loop.call_later(_CHECK_SECONDS, check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
