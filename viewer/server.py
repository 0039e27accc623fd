"""Starting the viser server: host and port checks, a free port when the asked one is taken, the URL.

viser itself silently tries the next port when one is taken and hangs when the host cannot be bound at
all, so the port is probed here first: a bad host is a one-line :class:`ReconError`, a taken port is
replaced by a free one and the user is told.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from recon.errors import ReconError

PORT_TRIES = 50
"""Ports after the asked one to try before letting the OS choose any free port."""
CANVAS_RGB = (20, 20, 20)
"""Colour of the empty 3D canvas in viser's dark theme (what screenshots compare against)."""


def _bindable(host: str, port: int) -> bool:
    """Whether a listening TCP socket can be bound to ``(host, port)`` right now.

    SO_REUSEADDR as asyncio's servers set it, so a port left in TIME_WAIT counts as free (viser can bind
    it) while a live listener does not. Raises OSError for hosts that cannot be bound at all.
    """
    last: OSError | None = None
    for family, stype, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE):
        with socket.socket(family, stype, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
                last = e
                continue
            return True
    raise last or OSError(errno.EADDRNOTAVAIL, f"no address for {host}")


def resolve_port(host: str, port: int) -> int:
    """``port`` when it is free on ``host``, else the next free one (up to :data:`PORT_TRIES` on), else one
    the OS picks.

    Raises:
        ReconError: an invalid port number, or a host that cannot be bound (not an address of this
            machine, or an unknown name).
    """
    if not 0 <= port <= 65535:
        raise ReconError(f"--port {port} is not a TCP port (0..65535)")
    try:
        for p in ([port] if port == 0 else range(port, min(port + PORT_TRIES, 65535) + 1)):
            if _bindable(host, p):
                return p
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    except (OSError, socket.gaierror) as e:
        raise ReconError(f"cannot serve the viewer on host {host!r} ({e.strerror or e}); "
                         "use --host 127.0.0.1 (this machine only) or 0.0.0.0 (all interfaces)") from None


def viewer_url(host: str, port: int) -> str:
    """The address to open in a browser (an all-interfaces bind is reached through localhost)."""
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


@dataclass
class ViewerServer:
    """A running viser server and what the viewer needs around it.

    Attributes:
        server: the ``viser.ViserServer``.
        host, port: where it listens (``port`` is the one actually bound).
        url: the address to open.
        clients_seen: browsers that have connected so far (a client counts once viser received its
            first camera message, i.e. once its page is running).
    """

    server: object
    host: str
    port: int
    url: str
    clients_seen: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def num_clients(self) -> int:
        return len(self.server.get_clients())

    def stop(self) -> None:
        self.server.stop()


def say(msg: str) -> None:
    """Print a status line at once (stdout may be a pipe, e.g. under a test or a log collector)."""
    print(msg, flush=True)


def start_server(
    host: str = "127.0.0.1",
    port: int = 8080,
    label: str = "recon",
    log: Callable[[str], None] | None = say,
) -> ViewerServer:
    """Start a viser server on ``host``:``port`` (or a free port near it) and print its URL.

    Each browser connection and disconnection is logged with ``log`` (None: silent), so a user (and the
    tests) can see that the page really reached the server.

    Raises:
        ReconError: bad host or port; viser not installed.
    """
    try:
        import viser
    except ImportError:
        raise ReconError("the viewer needs viser: pip install 'recon[viewer]'") from None
    chosen = resolve_port(host, port)
    server = viser.ViserServer(host=host, port=chosen, label=label, verbose=False)
    # Dark canvas: the trainer composites on black, so semi-transparent Gaussians look as they were fitted.
    # No share button: it would publish the scene through viser's public relay.
    server.gui.configure_theme(dark_mode=True, show_share_button=False)
    bound = int(server.get_port())  # viser moves on by itself if another process took it meanwhile
    vs = ViewerServer(server=server, host=host, port=bound, url=viewer_url(host, bound))
    if log is not None:
        if bound != port and port != 0:
            log(f"recon: port {port} is taken; the viewer uses port {bound} instead")
        log(f"recon: viewer at {vs.url} (Ctrl-C stops it)")

    @server.on_client_connect
    def _(client) -> None:
        with vs._lock:
            vs.clients_seen += 1
        if log is not None:
            log(f"recon: viewer: browser connected (client {client.client_id})")

    @server.on_client_disconnect
    def _(client) -> None:
        if log is not None:
            log(f"recon: viewer: browser disconnected (client {client.client_id})")

    return vs
