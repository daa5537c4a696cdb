"""URL input on the service's side: one pull per URL ingress, from CreateIngress on.

A pull is a session worker (relay/worker/url_input.py) that fetches, paces and
publishes the media itself; this side only starts it as a session of the host
(lifetime.py: resource id `UR_`, BUFFERING, PUBLISHING with the worker's reports,
COMPLETE when the media ends, ERROR with the worker's message). DeleteIngress
cancels it like any other session. A pull refused before it starts (disabled, no
capacity) has no publisher to tell: its ingress ends in ERROR with the reason.

Restart: a pull that the service's shutdown (or a crash) interrupts keeps its
BUFFERING/PUBLISHING state, and the control plane starts it again on the next start
of the service, as a new session (new resource id and started_at): a live source
resumes at its live edge, a file plays again from its start. A URL ingress that
ended (COMPLETE, ERROR) stays ended.
"""

from __future__ import annotations

import trio
from livekit.protocol import ingress as pb

from .lifetime import Refusal, Refused, SessionHost


class UrlFront:
    """Starts the pulls of URL ingresses in a nursery of its own."""

    def __init__(self, host: SessionHost) -> None:
        self.host = host
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the pulls until cancelled (they end with it)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, info: pb.IngressInfo) -> None:
        """Begin pulling a URL ingress (just created, or resumed)."""
        assert self._nursery is not None, "UrlFront.run is not running"
        self._nursery.start_soon(self._pull, info)

    async def _pull(self, info: pb.IngressInfo) -> None:
        try:
            self.host.check("url", info)
            async with self.host.session("url", info) as live:
                await live.worker_exited()
                live.end("the media ended")
        except Refused as exc:
            if exc.reason is not Refusal.STOPPED:  # stopped: deleted, or left to resume
                await self.host.write_refusal("url", info, exc)
