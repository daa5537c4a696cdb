"""The web console (/console/): ingresses at a glance, create/edit/delete, the
publisher's settings to copy, and a live preview of the room's tracks.

Served by the node's HTTP listener from Quart templates and a little plain
JavaScript; its one browser dependency, livekit-client, comes from npm through
scripts/setup (js/package.json). `_sessions` owns sign-in and CSRF, `_forms` the
mapping between forms and API requests, `_routes` the pages.
"""

from ._routes import ConsoleSettings, console_blueprint
from ._sessions import ConsoleSessions

__all__ = ["ConsoleSessions", "ConsoleSettings", "console_blueprint"]
