"""The Sandbox: one configured instance of the stand-in provider, in-process or served."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ops.serve import serve_in_thread

from .app import build_app
from .callbacks import Callbacks
from .config import SandboxConfig
from .errors import quiet_deliberate_truncations
from .files import UrlSigner
from .media import MediaCache
from .state import SandboxState


class Sandbox:
    """The sandbox provider: its state, its ASGI app and its knobs.

    Example:
        >>> sb = Sandbox(SandboxConfig(flavor="router", api_key="sk-test", fast=True))
        >>> with sb.serve() as url:  # doctest: +SKIP
        ...     httpx.post(f"{url}/v1/videos", ...)

    Args:
        config: the knobs; the defaults when omitted.
        clock: epoch seconds now (tests of the state may pass a fake one).
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock
        self.state = SandboxState(self.config)
        self.media = MediaCache()
        self.signer = UrlSigner()
        # Until when (the clock's seconds) file downloads are refused: file_outage_s from
        # when that knob was last set.
        self.file_outage_until = self.clock() + self.config.file_outage_s
        self.callbacks = Callbacks(self)
        # Set while no server is running, so hangs and slow answers give up at shutdown
        # instead of holding uvicorn's graceful exit for hang_s.
        self.closing = threading.Event()
        self.app = build_app(self)
        quiet_deliberate_truncations()

    def configure(self, **patch: Any) -> SandboxConfig:
        """Change knobs at run time (the whole config is re-validated).

        Args:
            **patch: fields of SandboxConfig.

        Returns:
            The new config.

        Raises:
            pydantic.ValidationError: for an unknown knob or a bad value (nothing changes).
        """
        new = self.config.patched(patch)
        if new.seed != self.config.seed:
            self.state.reseed(new.seed)
        if "fault_sequence" in patch:
            self.state.restart_sequences()
        if "file_outage_s" in patch:
            self.file_outage_until = self.clock() + new.file_outage_s
        self.config = new
        return new

    def stats(self, *, include_tasks: bool = True) -> dict[str, Any]:
        """The counters, as GET /_sandbox/stats answers them (shape: README.md, Stats)."""
        out = self.state.stats(self.clock(), include_tasks=include_tasks)
        out["flavor"] = self.config.flavor
        return out

    def reset_stats(self, *, drop_tasks: bool = False) -> None:
        """Zero every counter; with drop_tasks also forget tasks, characters and idempotency."""
        self.state.reset_stats(drop_tasks=drop_tasks, now=self.clock())

    def end_generation(self, task_id: str) -> None:
        """End a task's generation now, whatever its timing said: a test decides when the
        provider is done, so that what it watches meanwhile does not hang on the host's
        speed (a generation long enough for the slowest host is then no slower on a fast one).

        Raises:
            KeyError: no such task.
        """
        self.state.end_generation(task_id, self.clock())

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve the API on uvicorn in a background thread until the block ends.

        Args:
            host: the interface to bind.
            port: the port; 0 picks a free one.

        Yields:
            The base URL, e.g. ``http://127.0.0.1:8300``.
        """
        self.closing.clear()
        with serve_in_thread(self.app, host, port) as url:
            try:
                yield url
            finally:
                self.closing.set()

    def close(self) -> None:
        """Stop the encoder threads (the instance can't serve files afterwards)."""
        self.media.close()
