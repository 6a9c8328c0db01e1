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
* *focus*: for the configuration being handed off, a fast server and victims are drawn, and
  per seed a set of further rules (:class:`AdversaryOptions`: others answer writes at once,
  stalled writes, cut queries, held transfers) -- each the general form of one hand-off race
  (tests/sim/test_older_sources.py, test_mixed_modes.py, test_obsolete_race.py,
  test_coverable.py, test_store_retry.py), so that the plain swarm finds those bugs without a
  script (docs/testing.md has the table);
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
    CvrAccept,
    CvrPrepare,
    GetGroup,
    PutBatch,
    PutData,
    QueryData,
    QueryTag,
    ReadConfig,
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
    # which further focus rules are on is drawn per seed (swarm testing); each is the shape of
    # one hand-off race, in general form (every role is drawn, never a named server)
    others_put_now: bool = False
    """Focus: a client's PUT_DATA reaches the servers that are neither fast nor victims at once
    (not after the victims), so a write can complete on them while the victims' answers to the
    reconfigurer miss it -- and a client's READ_CONFIG to them waits for the next finalization
    (a classic client's discovery then misses the successor those servers heard of first,
    tests/sim/test_mixed_modes.py)."""
    stall_writes: bool = False
    """Focus: a chosen client's phase-2 requests (PUT_DATA, CVR_ACCEPT) to *every* server of the
    configuration being handed off wait for the next finalization: the write straddles the whole
    reconfiguration (a coverable level decided but not put, §9.1; a Store write whose hedge
    relocates it, §8.5)."""
    cut_queries: bool = False
    """Focus: a chosen client's phase-1 queries (QUERY_TAG, QUERY_DATA, CVR_PREPARE) to every
    server of the configuration being handed off wait for the next finalization, while its
    queries to the successor go on: the successor answers before the transfer, the predecessor
    only once it is OBSOLETE (§8.3, tests/sim/test_obsolete_race.py)."""
    hold_transfer: bool = False
    """Focus: a reconfigurer's PUT_BATCH (the transfer into the successor) waits a seeded
    5--50 ms, so that clients that learned the successor read it empty first."""


_HANDOFF: tuple[type[Request], ...] = (GetGroup, WriteConfig, PutBatch)
_PHASE2: tuple[type[Request], ...] = (PutData, CvrAccept)
_QUERIES: tuple[type[Request], ...] = (QueryTag, QueryData, CvrPrepare)


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
        self._cuts: dict[tuple[str, str], list[_Hold]] = {}
        """(sender, server) -> the holds of that link's cuts (each matches some requests)."""
        self._decided: dict[tuple[str, str, int], Request] = {}
        """Requests already decided on (kept alive so that their ids stay unique)."""
        self._waiting: list[_Hold] = []
        self.steps = 0
        self.held = 0
        self.stopped = False
        self.victims: frozenset[str] = frozenset()
        self.fast: str | None = None
        self.focus_config: Configuration | None = None
        self.told: set[str] = set()
        """Configurations a server of which has heard of a successor (from a reconfigurer)."""
        cluster.interceptors.append(self.intercept)
        cluster.observers.append(self.observe)

    def focus_on(self, c: Configuration) -> None:
        """``c`` is the configuration whose hand-off comes next."""
        if self.opts.focus and c.n >= 2:
            # q - 1 victims; with others_put_now at most n - q, so that the fast server and the
            # others still make a quorum for a write
            count = c.quorum_size - 1
            if self.opts.others_put_now:
                count = min(count, c.n - c.quorum_size)
            fast, *victims = self.rng.sample(c.server_ids, count + 1)
            self.fast, self.victims = fast, frozenset(victims)
            self.focus_config = c
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
            for cut in self._cuts.get((sender, server), ()):
                if cut.match is not None and cut.match(req):
                    hold = cut
                    break
        if hold is not None:
            hold.copies.append(copy)
            return True
        if key in self._decided:
            return False
        self._decided[key] = req
        rng = self.rng
        focus = self.fast is not None
        # the roles hold for requests about the configuration being handed off only (a server
        # may be a member of its successor too)
        on_focus = (
            self.focus_config is not None
            and getattr(req, "config_id", None) == self.focus_config.id
        )
        victim = on_focus and server in self.victims
        fast = on_focus and server == self.fast
        if self.is_reconfigurer(sender) and isinstance(req, _HANDOFF):
            if focus and self.opts.hold_transfer and isinstance(req, PutBatch):
                if rng.random() < self.opts.focus_chance:
                    hold = self._holds[key] = _Hold(finals=-1, extra_s=0.0)
                    self.cluster.loop.call_later(rng.uniform(0.005, 0.05), self._release, hold)
                    kind = "hold transfer"
            elif focus and victim and _tells_successor(req):
                if rng.random() < self.opts.focus_chance:
                    # the victim answers plain reads but hears of no successor
                    hold = self._new_hold(
                        self._tells_focus,
                        finals=1,
                        later=True,  # after the writes it missed
                    )
                    self._cuts.setdefault((sender, server), []).append(hold)
                    kind = "cut (victim)"
            elif focus and fast and isinstance(req, GetGroup):
                if rng.random() < self.opts.focus_chance:
                    hold = self._holds[key] = self._new_hold(finals=1)
                    kind = "hold read (fast)"
            elif rng.random() < self.opts.handoff_reconfig:
                kinds = rng.choice([(type(req),), _HANDOFF])
                hold = self._new_hold(
                    lambda r, kinds=kinds: isinstance(r, kinds)  # type: ignore[misc]
                )
                self._cuts.setdefault((sender, server), []).append(hold)
                kind = "cut " + "/".join(k.__name__ for k in kinds)
        elif focus and self.is_reconfigurer(sender) and isinstance(req, ReadConfig) and fast:
            # another reconfigurer's discovery then hears of the successor from the others
            if rng.random() < self.opts.focus_chance:
                hold = self._holds[key] = self._new_hold(finals=1)
                kind = "hold read-config (fast)"
        elif (
            focus
            and isinstance(req, WriteConfig)
            and (victim or (fast and self.opts.others_put_now))
        ):
            # a client writing back a successor it learned would tell the victim too (and,
            # while the others answer writes at once, the fast server)
            if rng.random() < self.opts.focus_chance:
                hold = self._holds[key] = self._new_hold(finals=1, later=True)
                kind = "hold write-back (victim)"
        elif (
            focus
            and not self.is_reconfigurer(sender)
            and isinstance(req, (*_PHASE2, *_QUERIES))
            and self._stall(sender, req)
        ):
            hold = self._client_cut(sender, req, server)
            kind = "stall " + ("write" if isinstance(req, _PHASE2) else "queries")
        elif (
            focus
            and self.opts.others_put_now
            and isinstance(req, ReadConfig)
            and not self.is_reconfigurer(sender)
            and self._other(req.config_id, server)
            and req.config_id in self.told  # (before, it has nothing to hide)
        ):
            if rng.random() < self.opts.focus_chance:
                hold = self._holds[key] = self._new_hold(finals=1)
                kind = "hold read-config (other)"
        elif isinstance(req, PutData) and not self.is_reconfigurer(sender):
            if focus and self.opts.others_put_now and self._other(req.config_id, server):
                pass  # the others answer the write at once
            elif focus and on_focus and not fast and rng.random() < self.opts.focus_chance:
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

    def _tells_focus(self, req: Request) -> bool:
        """A WRITE_CONFIG or SET_NEXT_AND_GET about the configuration being handed off."""
        c = self.focus_config
        return (
            c is not None
            and isinstance(req, (GetGroup, WriteConfig))
            and _tells_successor(req)
            and req.config_id == c.id
        )

    def _other(self, config_id: str, server: str) -> bool:
        """``server`` is in the focus configuration, neither fast nor a victim."""
        c = self.focus_config
        return (
            c is not None
            and config_id == c.id
            and server in c.server_ids
            and server != self.fast
            and server not in self.victims
        )

    def _stall(self, sender: str, req: Request) -> bool:
        """Whether to stall this client request to the focus configuration (rules
        ``stall_writes``, ``cut_queries``); a request a cut already holds never gets here."""
        c = self.focus_config
        if c is None or getattr(req, "config_id", None) != c.id:
            return False
        if isinstance(req, _PHASE2):
            return self.opts.stall_writes and self.rng.random() < self.opts.focus_chance / 4
        # queries: once a server of c heard of its successor, so that clients may know both
        return (
            self.opts.cut_queries
            and c.id in self.told
            and self.rng.random() < self.opts.focus_chance / 2
        )

    def _client_cut(self, sender: str, req: Request, server: str) -> _Hold:
        """Cut ``sender``'s requests of ``req``'s kind (phase 2, or queries) to every server of
        the focus configuration until the next finalization."""
        c = self.focus_config
        assert c is not None
        kinds = _PHASE2 if isinstance(req, _PHASE2) else _QUERIES
        cid = c.id

        def match(r: Request) -> bool:
            return isinstance(r, kinds) and getattr(r, "config_id", None) == cid

        hold = self._new_hold(match, finals=1, later=self.rng.random() < 0.5)
        for sid in c.server_ids:
            self._cuts.setdefault((sender, sid), []).append(hold)
        return hold

    def observe(self, sender: str, server: str, req: Request) -> None:
        if not self.is_reconfigurer(sender):
            return
        self.steps += 1
        if isinstance(req, (GetGroup, WriteConfig)) and _tells_successor(req):
            self.told.add(req.config_id)
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
        self._cuts = {
            k: rest for k, hs in self._cuts.items() if (rest := [h for h in hs if h is not hold])
        }
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
        cuts = [h for hs in self._cuts.values() for h in hs]
        for hold in {id(h): h for h in [*self._holds.values(), *cuts]}.values():
            self._release(hold)


__all__ = ["AdversaryOptions", "HandoffAdversary"]
