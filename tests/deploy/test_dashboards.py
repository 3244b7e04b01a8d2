"""The committed dashboards and alert rules are what their generator makes, and the rules
are valid for Prometheus' own checker."""

from __future__ import annotations

import json
import shutil
import subprocess

from deploy.grafana.dashboards import ALERTS
from deploy.grafana.generate import ALERTS_FILE, DASHBOARD_DIR, rendered


def test_committed_files_are_what_the_generator_makes() -> None:
    stale = [str(path) for path, text in rendered().items() if not path.exists() or path.read_text() != text]
    assert not stale, f"run `make dashboards` and commit: {stale}"


def test_every_panel_reads_the_datasource_variable_and_has_a_query() -> None:
    for path in DASHBOARD_DIR.glob("*.json"):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


def test_alert_rules_pass_promtool() -> None:
    assert shutil.which("promtool"), "promtool comes with the prometheus Debian package (make system-deps)"
    out = subprocess.run(["promtool", "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout
