"""The hand-off adversary and long holds: schedules that straddle a reconfiguration (§8.2, §8.3).

The bugs of the configuration hand-off need one message to arrive *after a whole
reconfiguration*: a write's PUT_DATA reaching a server of the old configuration once the new one
was finalized, a reconfigurer's SET_NEXT_AND_GET or WRITE_CONFIG reaching its last server after
another reconfiguration decided, transferred and finalized. Uniform millisecond delays almost
never produce that. :class:`HandoffAdversary` does it on purpose, with seeded choices:

* it picks requests of the kinds the hand-off depends on -- a client's PUT_DATA (writes and
  read write-backs), a reconfigurer's GET_GROUP / SET_NEXT_AND_GET, WRITE_CONFIG and PUT_BATCH
  -- and holds each chosen one, on one chosen server, together with every retransmission of it;
* a held request is released once ``after_finals`` more configurations have been finalized
  (observed as a WRITE_CONFIG carrying an F entry reaching a server) plus a seeded extra delay
  ("and beyond"), or -- with probability ``by_steps`` -- once a seeded number of reconfiguration
  messages (consensus, SET_NEXT_AND_GET, transfer, WRITE_CONFIG) have reached servers, which
  lands it at a random point *inside* a hand-off; or after ``cap_s`` at the latest, so that
  nothing waits forever;
* *long holds*: independently, any request may be held for a seeded 30--600 ms.

A hold only delays a message (the network is asynchronous): it never breaks the failure model,
so the correct protocol must stay linearizable under every schedule the adversary makes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import Configuration
from ..wire.messages import (
    GetGroup,
    PutBatch,
    PutData,
    Reply,
    Request,
    WriteConfig,
)
from .cluster import SimCluster


@dataclass(frozen=True)
class AdversaryOptions:
    handoff_client: float = 0.0
    """Probability that a client's PUT_DATA to a server is held until after a finalization."""
    handoff_reconfig: float = 0.0
    """Probability that a reconfigurer's hand-off request to a server is held the same way."""
    after_finals: tuple[int, ...] = (1,)
    """How many further finalizations a hand-off hold waits for (drawn per hold)."""
    extra_max_s: float = 0.02
    """Seeded extra delay after the finalization ("and beyond")."""
    cap_s: tuple[float, float] = (0.05, 0.6)
    """A hand-off hold ends after a seeded time in this range even if nothing is finalized."""
    long_hold: float = 0.0
    """Probability that any request is held for a seeded 30--600 ms."""
    by_steps: float = 0.5
    """Probability that a hand-off hold ends after a number of reconfiguration steps instead."""
    max_steps: int = 30
    """At most this many reconfiguration messages delivered before such a hold ends."""
    focus: bool = False
    """Focus on one hand-off at a time. For the configuration being reconfigured (the initial
    one, then each newly finalized one) the adversary picks a *fast* server and q - 1
    *victims*: a client's PUT_DATA reaches the fast server at once, the victims after the next
    finalization, the others later still; a reconfigurer's WRITE_CONFIGs to the victims are
    cut (so that they answer the write with no successor); its reads (GET_GROUP,
    SET_NEXT_AND_GET) of the fast server are held. Each with probability ``focus_chance`` --
    the shape of the §8.2 counterexample and of its relatives."""
    focus_chance: float = 0.0


_HANDOFF: tuple[type[Request], ...] = (GetGroup, WriteConfig, PutBatch)


def _tells_successor(req: Request) -> bool:
    """WRITE_CONFIG and SET_NEXT_AND_GET: requests that give a server a next entry."""
    return isinstance(req, WriteConfig) or (isinstance(req, GetGroup) and req.set_next is not None)


@dataclass
class _Hold:
    finals: int
    """Release once this many configurations have been finalized (-1: never by that)..."""
    extra_s: float
    steps: int = -1
    """... or once this many reconfiguration messages were delivered (-1: never by that)."""
    match: Callable[[Request], bool] | None = None
    """A cut of a reconfigurer's link: every request it matches joins the hold."""
    copies: list[tuple[str, str, int, Request, Callable[[Reply], None]]] = field(
        default_factory=list
    )
    released: bool = False


class HandoffAdversary:
    """Installs itself as an interceptor and an observer of ``cluster``.

    A client's PUT_DATA is held per request (with its retransmissions) on one server; a
    reconfigurer's link to a server is *cut* for one kind of hand-off request or for all of
    them, so that, e.g., both its (c', P) and its (c', F) WRITE_CONFIG miss that server while its
    SET_NEXT_AND_GET reaches it -- the shape of the §8.2 counterexample."""

    def __init__(
        self,
        cluster: SimCluster,
        rng: random.Random,
        options: AdversaryOptions,
        *,
        is_reconfigurer: Callable[[str], bool],
    ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.opts = options
        self.is_reconfigurer = is_reconfigurer
        self.finalized: set[tuple[str, str]] = set()
        self._holds: dict[tuple[str, str, int], _Hold] = {}
        """(sender, server, id(request)) -> its hold; retransmissions join it."""
        self._cuts: dict[tuple[str, str], _Hold] = {}
        """(reconfigurer, server) -> the hold of that cut link."""
        self._decided: dict[tuple[str, str, int], Request] = {}
        """Requests already decided on (kept alive so that their ids stay unique)."""
        self._waiting: list[_Hold] = []
        self.steps = 0
        self.held = 0
        self.stopped = False
        self.victims: frozenset[str] = frozenset()
        self.fast: str | None = None
        cluster.interceptors.append(self.intercept)
        cluster.observers.append(self.observe)

    def focus_on(self, c: Configuration) -> None:
        """``c`` is the configuration whose hand-off comes next."""
        if self.opts.focus and c.n >= 2:
            fast, *victims = self.rng.sample(c.server_ids, c.quorum_size)
            self.fast, self.victims = fast, frozenset(victims)
            self.cluster.log(f"adversary: fast {fast}, victims {sorted(victims)}")

    def _new_hold(
        self,
        match: Callable[[Request], bool] | None = None,
        *,
        finals: int = 0,
        later: bool = False,
    ) -> _Hold:
        """A hold released after ``finals`` more finalizations (drawn if 0) plus an extra delay
        (longer if ``later``), or a number of reconfiguration steps, or at the cap."""
        if finals:
            hold = _Hold(
                finals=len(self.finalized) + finals,
                extra_s=self.rng.uniform(0, self.opts.extra_max_s) * (1 + 3 * later),
            )
        elif self.rng.random() < self.opts.by_steps:
            hold = _Hold(
                finals=-1, extra_s=0.0, steps=self.steps + self.rng.randint(1, self.opts.max_steps)
            )
        else:
            hold = _Hold(
                finals=len(self.finalized) + self.rng.choice(self.opts.after_finals),
                extra_s=self.rng.uniform(0, self.opts.extra_max_s),
            )
        hold.match = match
        self._waiting.append(hold)
        self.cluster.loop.call_later(self.rng.uniform(*self.opts.cap_s), self._release, hold)
        return hold

    def intercept(
        self,
        sender: str,
        server: str,
        rid: int,
        req: Request,
        on_reply: Callable[[Reply], None],
    ) -> bool:
        if self.stopped:
            return False
        copy = (sender, server, rid, req, on_reply)
        key = (sender, server, id(req))
        hold = self._holds.get(key)
        if hold is None:
            cut = self._cuts.get((sender, server))
            if cut is not None and cut.match is not None and cut.match(req):
                hold = cut
        if hold is not None:
            hold.copies.append(copy)
            return True
        if key in self._decided:
            return False
        self._decided[key] = req
        rng = self.rng
        focus = self.fast is not None
        victim = server in self.victims
        if self.is_reconfigurer(sender) and isinstance(req, _HANDOFF):
            if focus and victim and _tells_successor(req):
                if rng.random() < self.opts.focus_chance:
                    # the victim answers plain reads but hears of no successor
                    hold = self._cuts[(sender, server)] = self._new_hold(_tells_successor, finals=1)
                    kind = "cut (victim)"
            elif focus and server == self.fast and isinstance(req, GetGroup):
                if rng.random() < self.opts.focus_chance:
                    hold = self._holds[key] = self._new_hold(finals=1)
                    kind = "hold read (fast)"
            elif rng.random() < self.opts.handoff_reconfig:
                kinds = rng.choice([(type(req),), _HANDOFF])
                hold = self._cuts[(sender, server)] = self._new_hold(
                    lambda r, kinds=kinds: isinstance(r, kinds)  # type: ignore[misc]
                )
                kind = "cut " + "/".join(k.__name__ for k in kinds)
        elif focus and isinstance(req, WriteConfig) and victim:
            # a client writing back a successor it learned would tell the victim too
            if rng.random() < self.opts.focus_chance:
                hold = self._holds[key] = self._new_hold(finals=1, later=True)
                kind = "hold write-back (victim)"
        elif isinstance(req, PutData) and not self.is_reconfigurer(sender):
            if focus and server != self.fast and rng.random() < self.opts.focus_chance:
                later = not victim
                hold = self._holds[key] = self._new_hold(finals=1, later=later)
                kind = "hold put (victim)" if not later else "hold put (later)"
            elif not focus and rng.random() < self.opts.handoff_client:
                hold = self._holds[key] = self._new_hold()
                kind = "hand-off hold"
        if hold is None and self.opts.long_hold and rng.random() < self.opts.long_hold:
            hold = self._holds[key] = _Hold(finals=-1, extra_s=0.0)
            self.cluster.loop.call_later(rng.uniform(0.03, 0.6), self._release, hold)
            kind = "long hold"
        if hold is None:
            return False
        self.held += 1
        hold.copies.append(copy)
        self.cluster.log(f"{kind} {sender}->{server} #{rid} {type(req).__name__}")
        return True

    def observe(self, sender: str, server: str, req: Request) -> None:
        if not self.is_reconfigurer(sender):
            return
        self.steps += 1
        if isinstance(req, WriteConfig) and req.entry.status == "F":
            final = (req.group, req.entry.config.id)
            if final not in self.finalized:
                self.finalized.add(final)
                self.focus_on(req.entry.config)
        finals, steps = len(self.finalized), self.steps

        def due(h: _Hold) -> bool:
            return 0 <= h.finals <= finals or 0 <= h.steps <= steps

        ready = [h for h in self._waiting if due(h)]
        if not ready:
            return
        self._waiting = [h for h in self._waiting if not due(h)]
        for h in ready:
            self.cluster.loop.call_later(h.extra_s, self._release, h)

    def _release(self, hold: _Hold) -> None:
        if hold.released:
            return
        hold.released = True
        self._holds = {k: h for k, h in self._holds.items() if h is not hold}
        self._cuts = {k: h for k, h in self._cuts.items() if h is not hold}
        if hold in self._waiting:
            self._waiting.remove(hold)
        # one copy of each request: the others are its retransmissions
        sent: set[int] = set()
        for sender, server, rid, req, on_reply in hold.copies:
            if id(req) in sent:
                continue
            sent.add(id(req))
            self.cluster.log(f"release {sender}->{server} #{rid} {type(req).__name__}")
            self.cluster.transmit(sender, server, rid, req, on_reply)

    def release_all(self) -> None:
        """Deliver everything still held and hold nothing more (the run is healing)."""
        self.stopped = True
        for hold in {id(h): h for h in [*self._holds.values(), *self._cuts.values()]}.values():
            self._release(hold)


__all__ = ["AdversaryOptions", "HandoffAdversary"]
