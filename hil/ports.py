"""Loopback TCP ports for rigs, demos, tests and benchmarks that two servers can never share.

Asking the kernel for port 0 and closing the socket hands out a port that was free a moment
ago: the kernel may give the same port to the next caller, or to any outgoing connection
(every client socket takes a port from the same ephemeral range). Servers we start in other
processes (mosquitto, the simulator's IEDs) need their port before they bind, so they cannot
bind port 0 themselves. `reserve_port()` therefore:

- picks ports *below* the kernel's ephemeral range (`ip_local_port_range`), where the kernel
  never puts a client socket or a port-0 bind;
- never hands out the same port twice in one process;
- holds an exclusive lock per port (a file under the temporary directory, locked with
  `flock` for the life of the process), so other processes using this module (parallel test
  runs, a demo beside a test run) skip it;
- checks that the port can be bound on 127.0.0.1 right now (without SO_REUSEADDR, so a port
  still in TIME_WAIT is skipped too).

What is left is a process that binds a fixed port of ours without asking this module; servers
we do not control retry on a fresh port when their bind fails (see `hil.broker`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

PORT_FLOOR = 10_000
"""Lowest port handed out: above the well-known and most registered service ports."""
_FALLBACK_EPHEMERAL_LOW = 32_768
_LOCK_DIR = Path(tempfile.gettempdir()) / "stima-ports"
_lock = threading.Lock()
_handed_out: set[int] = set()
_held: dict[int, int] = {}
MAX_HELD = 64
"""Port locks held at once. Each is a descriptor: thousands of them would push every later
socket above 1023, where `select()` (paho's network loop among others) cannot watch it."""
"""Port → file descriptor of its lock file, open (and so locked) until the process ends."""


class NoPortAvailable(RuntimeError):
    pass


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (client sockets and port-0 binds)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_LOW
    return low if low > PORT_FLOOR + 1000 else _FALLBACK_EPHEMERAL_LOW


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _lock_port(port: int) -> int | None:
    """An open, exclusively locked descriptor for `port`'s lock file, or None if another process holds it."""
    if not _LOCK_DIR.is_dir():
        _LOCK_DIR.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            _LOCK_DIR.chmod(0o1777)  # shared by every user's test runs, like /tmp itself
    fd = os.open(_LOCK_DIR / f"{port}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def reserve_port(max_tries: int = 2000) -> int:
    """A loopback TCP port no other caller of this module gets and nothing is bound to now."""
    high = ephemeral_low() - 1
    rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "big"))
    with _lock:
        for _ in range(max_tries):
            port = rng.randint(PORT_FLOOR, high)
            if port in _handed_out:
                continue
            fd = _lock_port(port)
            if fd is None:
                continue
            if not _bindable(port):
                os.close(fd)
                continue
            _handed_out.add(port)
            _held[port] = fd
            while len(_held) > MAX_HELD:
                # the oldest reservations were bound long ago (or given up): their locks can go, so
                # a long run (a whole test suite) does not fill its descriptor table; this process
                # still never hands their ports out again
                os.close(_held.pop(next(iter(_held))))
            return port
    raise NoPortAvailable(f"no free loopback port found in {max_tries} tries between {PORT_FLOOR} and {high}")


def handed_out() -> frozenset[int]:
    """Ports this process has reserved so far."""
    with _lock:
        return frozenset(_handed_out)
