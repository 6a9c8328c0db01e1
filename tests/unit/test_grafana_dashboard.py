"""docs/grafana/aresdsm.json names only metrics the server and the client library export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from aresdsm.metrics import ClientMetrics, ServerMetrics
from aresdsm.server import Server
from aresdsm.storage.memory import MemoryStorage

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "aresdsm.json"


def _families() -> set[str]:
    srv = Server(server_id="s1", host="127.0.0.1", port=0, storage=MemoryStorage())
    names: set[str] = set()
    for registry in (ServerMetrics(srv).registry, ClientMetrics().registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def test_dashboard_uses_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v.get("query", "") for v in dash["templating"]["list"]]
    used = {m for e in exprs if isinstance(e, str) for m in re.findall(r"aresdsm_[a-z_]+", e)}
    assert len(used) >= 15
    assert sorted(used - _families()) == []
