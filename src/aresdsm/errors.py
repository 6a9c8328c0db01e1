"""The exception tree of aresdsm.

Three kinds of failure (docs/architecture.md principle 7):

* bad input from the network is never raised to a caller of the server; the server answers with
  an error reply or closes the connection and counts it (:class:`FrameError` is what the decoder
  raises internally);
* misuse by a caller raises a specific subclass of :class:`AresError` with a clear message;
* a broken invariant raises :class:`InvariantViolation` and stops: it is a bug.

::

    AresError
    ├── ConfigurationError          invalid cluster file / configuration (docs/protocol.md §3)
    ├── OperationError              an operation could not complete
    │   ├── OperationTimeout        no quorum answered within timeout_s
    │   ├── QuorumUnavailable       too many servers refused or are unreachable for a quorum
    │   ├── ConsensusFailed         Paxos did not decide within its bounded retries (§5)
    │   ├── ConcurrencyExceeded     a TREAS read overlapped more than delta writes (§4.2)
    │   ├── CoverableConflict       a coverable write's outcome is unknown (§9.1)
    │   └── ServerError             a server answered with an error reply
    ├── FrameError                  malformed bytes from the network (wire format)
    ├── StorageError                the durable store failed
    └── InvariantViolation          a protocol invariant (docs/protocol.md §10) does not hold: a bug
"""

from __future__ import annotations


class AresError(Exception):
    """Base class of every error aresdsm raises on purpose."""


class ConfigurationError(AresError):
    """A cluster file, configuration descriptor or option is invalid (docs/protocol.md §3)."""


class OperationError(AresError):
    """A read, write or other client operation could not complete."""


class OperationTimeout(OperationError):
    """Not enough servers answered within the operation's deadline.

    The operation may or may not have taken effect (a write may become visible later).
    """


class QuorumUnavailable(OperationError):
    """So many servers refused or are unreachable that no quorum can answer."""


class ConsensusFailed(OperationError):
    """Paxos did not decide within the bounded number of attempts (contention or failures)."""


class ConcurrencyExceeded(OperationError):
    """A TREAS read overlapped more than delta concurrent writes, on every retry (§4.2)."""


class IntegrityError(OperationError):
    """Values did not match the writer's digest on every retry (a corrupt copy is never
    returned; docs/protocol.md §4)."""


class CoverableConflict(OperationError):
    """A coverable write (docs/protocol.md §9.1) may or may not have taken effect: its value may
    have been accepted and its outcome could not be learned in bounded time (contention, a
    failure). Read the object again, then retry on the version read. ``tag`` is the version the
    write installs if it did take effect."""

    def __init__(self, message: str, *, tag: object = None) -> None:
        super().__init__(message)
        self.tag = tag


class ServerError(OperationError):
    """A server answered a request with an error reply (code and message from the server)."""

    def __init__(self, code: str, message: str, *, server_id: str = "") -> None:
        where = f" from server {server_id}" if server_id else ""
        super().__init__(f"{code}{where}: {message}")
        self.code = code
        self.server_id = server_id


class FrameError(AresError):
    """Bytes received from the network are not a valid frame or message."""


class StorageError(AresError):
    """The durable storage engine failed (disk full, corrupt file, ...)."""


class InvariantViolation(AresError):
    """A protocol invariant does not hold. This is a bug; it is never swallowed."""
