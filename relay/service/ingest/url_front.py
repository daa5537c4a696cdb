"""URL input on the service's side: one pull per URL ingress, from CreateIngress on.

A pull is a session worker (relay/worker/url_input.py) that fetches, paces and
publishes the media itself; this side only starts it as a session of the host
(lifetime.py: resource id `UR_`, BUFFERING, PUBLISHING with the worker's reports,
COMPLETE when the media ends, ERROR with the worker's message). DeleteIngress
cancels it like any other session.

Capacity is decided when CreateIngress asks for the pull, before it answers, as the
reference does (a pull that no ingress node claims makes CreateIngress fail with
`unavailable`): a node without the CPU raises TwirpError `unavailable` "server
capacity exceeded", CreateIngress stores nothing (api/service.py) and the caller can
simply try again later. A URL ingress is not reusable, so ending it in ERROR instead
would leave the caller nothing to retry. The pull's session then keeps the promise
made here (`SessionHost.session(promise=...)`) rather than being decided a second
time.

A pull refused for another reason once admitted (disabled, no room) has no
publisher to tell: its ingress ends in ERROR with the reason.

Restart: a pull that the service's shutdown (or a crash) interrupts keeps its
BUFFERING/PUBLISHING state, and the control plane starts it again on the next start
of the service, as a new session (new resource id and started_at): a live source
resumes at its live edge, a file plays again from its start. Nobody waits for an
answer then, so a resumed pull is admitted by its session like a push, and one the
node has no capacity for ends in ERROR. A URL ingress that ended (COMPLETE, ERROR)
stays ended.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import trio
from livekit.protocol import ingress as pb

from api.errors import TwirpError
from api.validation import transcoding_enabled

from .admission import CAPACITY_EXCEEDED, Promise
from .control import ACTIVE
from .lifetime import Refusal, Refused, SessionHost

log = logging.getLogger(__name__)


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
        """Begin pulling a URL ingress (just created, or resumed).

        A just-created one is admitted here, synchronously: TwirpError `unavailable`
        if the node has no capacity for it, and nothing starts."""
        assert self._nursery is not None, "UrlFront.run is not running"
        promise = None
        if info.state.status not in ACTIVE:  # new, not a resume (left live by a stop)
            admission = self.host.admission
            promise = admission.reserve(admission.cost_for("url", transcoding_enabled(info)))
            if promise is None:
                self.host.rejected("url")
                log.warning("URL ingress %s not started: %s", info.ingress_id,
                            CAPACITY_EXCEEDED)
                raise TwirpError("unavailable", CAPACITY_EXCEEDED)
        self._nursery.start_soon(self._pull, info, promise)

    async def _pull(self, info: pb.IngressInfo, promise: Promise | None) -> None:
        try:
            with promise or nullcontext():  # released however the pull ends
                self.host.check("url", info)
                async with self.host.session("url", info, promise=promise) as live:
                    await live.worker_exited()
                    live.end("the media ended")
        except Refused as exc:
            if exc.reason is not Refusal.STOPPED:  # stopped: deleted, or left to resume
                await self.host.write_refusal("url", info, exc)
