"""The middle tier: serves the page, holds credentials, relays to the upstream, enforces policy.

* :class:`Relay` (``relay.py``): one client, one upstream, events both ways, framework-free;
* :class:`Policy` (``policy.py``): what clients may set, what the operator adds;
* :class:`ResumeOptions` (``resume.py``): resuming a conversation when the service ends a session;
* :class:`Upstreams` (``upstream.py``): which endpoints a client may pick, and connecting to them;
* :func:`create_app` (``app.py``): the aiohttp application (page, ``/api/config``,
  ``/healthz``, ``/realtime``);
* :class:`ServerThread` (``thread.py``): the app in a thread of its own (sync callers, tests);
* ``tools.py``: the demo server-side tools; ``cli.py``: ``aoai-realtime serve``.
"""

from .app import ServerConfig, create_app
from .errors import RelayError
from .local import LocalEngine
from .policy import Policy
from .relay import Channel, ChannelClosed, Relay, RelayObserver, RelayStats
from .resume import ResumeOptions
from .thread import ServerThread
from .upstream import Upstream, Upstreams

__all__ = [
    "Channel",
    "ChannelClosed",
    "LocalEngine",
    "Policy",
    "Relay",
    "RelayError",
    "RelayObserver",
    "RelayStats",
    "ResumeOptions",
    "ServerConfig",
    "ServerThread",
    "Upstream",
    "Upstreams",
    "create_app",
]
