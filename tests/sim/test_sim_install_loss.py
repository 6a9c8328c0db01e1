"""SimChannel re-sends InstallConfig on every ``unknown-config`` (found in review: it sent it
at most once per round and server, and never retransmitted it). With message loss, a lost
InstallConfig then left that server answering ``unknown-config`` to every retransmission for the
rest of the round, so a round could time out with live, reachable servers: here the final read
after healing (2 of c9's 3 servers never learned c9), and the swarm reported the seed as failing
-- a false alarm of the simulator, not of the protocol. Found with ``ares sim --seeds 800
--start 90000 --mode ares2 --treas --reconfigurers 3 --reconfigs 3 --keys 3 --clients 5
--loss 0.2 --duplicate 0.2 --fsync-max-s 0.01 --real-codec``.
"""

from __future__ import annotations

from aresdsm.sim.run import run_simulation


def test_lost_install_config_does_not_fail_the_seed() -> None:
    r = run_simulation(
        90399,
        servers=4,
        initial_servers=4,
        clients=5,
        ops=95,
        keys=3,
        write_ratio=0.45417564054995835,
        value_max_bytes=16,
        reconfigs=3,
        reconfigurers=3,
        treas=True,
        mode="ares2",
        fast_read=False,
        loss=0.2,
        duplicate=0.2,
        fsync_max_s=0.01,
        fault_interval_s=0.03,
        real_codec=True,
    )
    assert r.ok, r.explain()
