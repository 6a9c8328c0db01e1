"""``ares chaos --broken`` offers only the faults its clients can turn on."""

from __future__ import annotations

import dataclasses

import pytest

from aresdsm.chaos import BROKEN, SERVER_SIDE_FAULTS, ChaosOptions
from aresdsm.errors import ConfigurationError
from aresdsm.testing import Broken


def test_server_side_faults_are_not_offered_to_chaos_clients() -> None:
    fields = {f.name for f in dataclasses.fields(Broken)}
    assert fields >= SERVER_SIDE_FAULTS  # (a renamed field would make the exclusion silent)
    assert set(BROKEN.values()) == fields - SERVER_SIDE_FAULTS
    with pytest.raises(ConfigurationError, match="unknown broken variant"):
        ChaosOptions(broken=("skip-value-mac",)).validate()
    ChaosOptions(broken=("skip-write-back",)).validate()
