"""Network faults a bench or a test puts between the gateway and its broker.

`black_hole()` gives a loopback port whose SYNs go unanswered, as a firewalled broker's do:
a listener that never accepts, with its accept queue filled, so Linux drops every later SYN
and a connect() there hangs until its own timeout. `syn_sent_to(port)` counts the sockets of
this host waiting in SYN_SENT for it, so a caller knows when a connect attempt is hanging.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = ["black_hole", "syn_sent_to"]

_QUEUE_FILLERS = 3
_SYN_SENT = "02"


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port whose SYNs go unanswered: a listener that never accepts, backlog full."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(_QUEUE_FILLERS):  # fill the accept queue; later SYNs are dropped
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def syn_sent_to(port: int) -> int:
    """How many sockets on this host wait in SYN_SENT for 127.0.0.1:`port` (Linux).

    The black hole's own queue fillers count too: compare with the count before the gateway.
    """
    wanted = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[2] == wanted and row.split()[3] == _SYN_SENT)
