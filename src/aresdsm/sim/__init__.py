"""The deterministic cluster simulator (docs/architecture.md principle 5), shipped for users too.

* :func:`run_simulation` -- one seeded run of a whole cluster in virtual time, checked
  (linearizability, docs/protocol.md §10 invariants); :class:`SimOptions` describes its shape.
* :class:`Scenario` -- scripted schedules (hold, release, crash, restart) for precise
  interleavings such as the §8.2 counterexample.
* ``ares sim --seeds N`` -- many seeds from the command line (:mod:`.command`).
"""

from .cluster import ChannelSwitches, NetworkFaults, SimChannel, SimCluster
from .loop import SimLoop, SimulationStalled
from .run import BROKEN_VARIANTS, SimOptions, SimResult, run_simulation
from .scenario import Message, Scenario

__all__ = [
    "BROKEN_VARIANTS",
    "ChannelSwitches",
    "Message",
    "NetworkFaults",
    "Scenario",
    "SimChannel",
    "SimCluster",
    "SimLoop",
    "SimOptions",
    "SimResult",
    "SimulationStalled",
    "run_simulation",
]
