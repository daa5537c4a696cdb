"""URL input on the service's side: one pull per URL ingress, from CreateIngress on.

A pull is a session worker (relay/worker.py, relay/url_pull.py) that fetches,
paces and publishes the media itself; this side owns its lifetime and its state:
BUFFERING when it starts (resource id `UR_`), PUBLISHING with the worker's
reports, COMPLETE when the media ends, ERROR with the worker's message, and
nothing more once DeleteIngress has removed the ingress (the session's cancel
scope, registered like every other session, is what delete cancels).

Restart: a pull that the service's shutdown (or a crash) interrupts keeps its
BUFFERING/PUBLISHING state in the store, and the next start of the service pulls
it again from the URL, as a new session (new resource id and started_at): a live
source resumes at its live edge, a file plays again from its start. A URL
ingress that ended (COMPLETE, ERROR) stays ended.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio
from livekit.protocol import ingress as pb

from api.ids import URL_RESOURCE_PREFIX, new_resource_id
from api.store import IngressStore
from api.validation import transcoding_enabled

from . import metrics
from .admission import CAPACITY_EXCEEDED, Admission, Promise
from .pipeline import apply_reports
from .sessions import SHUTTING_DOWN, SessionRegistry, write_final_state
from .tokens import participant_token
from .wire import Start
from .worker_client import open_session_worker

log = logging.getLogger(__name__)

ACTIVE = (pb.IngressState.ENDPOINT_BUFFERING, pb.IngressState.ENDPOINT_PUBLISHING)
DISABLED = "session is disabled"


class UrlIngest:
    """Starts and owns the pulls of URL ingresses (IngressService's `UrlStarter`)."""

    def __init__(self, store: IngressStore, sessions: SessionRegistry, *, ws_url: str,
                 api_key: str, api_secret: str, admission: Admission | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.store = store
        self.sessions = sessions
        self.ws_url = ws_url
        self.api_key = api_key
        self.api_secret = api_secret
        self.admission = admission or Admission.unlimited()
        self.clock_ns = clock_ns
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Own the pulls; first resume those the previous run of the service left live."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            resumed = [info for info in await self.store.list()
                       if info.input_type == pb.IngressInput.URL_INPUT
                       and info.state.status in ACTIVE]
            for info in resumed:
                log.info("resuming the pull of %s, interrupted by a restart", info.ingress_id)
                self.start(info)
            task_status.started()
            await trio.sleep_forever()

    def start(self, info: pb.IngressInfo) -> None:
        """Begin pulling a URL ingress (just created, or resumed)."""
        assert self._nursery is not None, "UrlIngest.run is not running"
        self._nursery.start_soon(self._session, info)

    async def _session(self, info: pb.IngressInfo) -> None:
        ingress_id = info.ingress_id
        resource_id = new_resource_id(URL_RESOURCE_PREFIX)
        started_at = self.clock_ns()
        who = f"url session {resource_id} of {ingress_id}"
        status, error = pb.IngressState.ENDPOINT_COMPLETE, ""
        promise: Promise | None = None  # the CPU admission gave this pull
        with trio.CancelScope() as scope, self.sessions.register(ingress_id, resource_id,
                                                                 scope) as live:
            try:
                if info.HasField("enabled") and not info.enabled:
                    status, error = pb.IngressState.ENDPOINT_ERROR, DISABLED
                    return
                promise = self.admission.reserve(
                    self.admission.cost_for("url", transcoding_enabled(info)))
                if promise is None:
                    status, error = pb.IngressState.ENDPOINT_ERROR, CAPACITY_EXCEEDED
                    return
                if not await self.store.update_state(ingress_id, pb.IngressState(
                        status=pb.IngressState.ENDPOINT_BUFFERING, resource_id=resource_id,
                        started_at=started_at, updated_at=started_at)):
                    return  # deleted already
                log.info("%s: pulling into room %r as %r", who, info.room_name,
                         info.participant_identity)
                start = Start(self.ws_url, participant_token(self.api_key, self.api_secret,
                                                             info, resource_id),
                              info.SerializeToString(), transcode=transcoding_enabled(info),
                              url=info.url)
                async with open_session_worker(start) as worker:
                    await apply_reports(self.store, worker, ingress_id, resource_id,
                                        started_at, self.clock_ns)
                    worker.drain = False  # it has exited by itself
                if worker.failure:
                    status, error = pb.IngressState.ENDPOINT_ERROR, worker.failure
            finally:
                if promise is not None:
                    promise.release()
                reason = live.stop_reason or error or "the media ended"
                if live.stop_reason:
                    # deleted (the write below finds no ingress), or the service stops
                    status, error = pb.IngressState.ENDPOINT_INACTIVE, ""
                if live.stop_reason != SHUTTING_DOWN:  # a shutdown leaves it to be resumed
                    await write_final_state(self.store, self.clock_ns, ingress_id,
                                            resource_id, started_at, status, error)
                log.log(logging.WARNING if error else logging.INFO, "%s ended: %s", who,
                        reason)
                metrics.PUBLISH_STATUS.labels("url", pb.IngressState.Status.Name(status)).inc()
