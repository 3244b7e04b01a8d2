"""Voxline's Grafana dashboards and Prometheus alert rules, as code.

Written with Grafana's own `grafana-foundation-sdk` (a dev dependency) and committed as
JSON under `deploy/grafana/dashboards/`; `python -m deploy.grafana.generate` (`make
dashboards`) rewrites them, and a test checks that the committed files are what this code
makes. The alert rules (`deploy/prometheus/alerts.yml`) come from the same place, so a
panel and the alert on the same SLO use one expression.

Queries assume one Prometheus job per service (`gateway`, `stt`, `brain`, `tts`,
`orchestrator`), as deploy/prometheus/prometheus.yml scrapes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from grafana_foundation_sdk.builders import bargauge, heatmap, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.models.common import BarGaugeDisplayMode, VizOrientation
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"
# The stages of a reply turn in pipeline order, as the call record names them.
STAGES = (
    "end_of_turn",
    "stt_final",
    "llm_first_token",
    "llm_first_sentence",
    "tts_first_audio",
    "first_media_sent",
    "pipeline_overhead",
)
STAGE_MATCH = "|".join(STAGES)


def quantile(q: float, metric: str, by: str = "", selector: str = "", window: str = RATE) -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{selector}[{window}])))"


TURN_P95 = quantile(0.95, "voxline_turn_latency_seconds", window="5m")
VOICE_STOP_P95 = quantile(0.95, "voxline_barge_in_voice_stop_seconds", window="5m")
PROVIDER_ERROR_RATIO = (
    "sum by (provider) (rate(voxline_provider_errors_total[5m]))"
    ' / on() group_left() sum(rate(voxline_turns_total{kind="reply"}[5m]))'
)


@dataclass(frozen=True)
class Alert:
    """An SLO alert: `expr` is what is measured, `op threshold` when it fires; the test
    checks that `expr` alone returns data from a stack taking calls."""

    name: str
    expr: str
    op: str
    threshold: float
    for_: str
    summary: str

    def rule(self) -> dict[str, object]:
        return {
            "alert": self.name,
            "expr": f"{self.expr} {self.op} {self.threshold:g}",
            "for": self.for_,
            "labels": {"severity": "page"},
            "annotations": {"summary": self.summary},
        }


ALERTS = (
    Alert(
        "VoxlineTurnLatencyP95High",
        TURN_P95,
        ">",
        1.0,
        "10m",
        "p95 turn latency (caller's end of speech to first reply audio) above 1 s for 10 minutes",
    ),
    Alert(
        "VoxlineBargeInVoiceStopP95High",
        VOICE_STOP_P95,
        ">",
        0.12,
        "10m",
        "p95 barge-in voice stop (caller's speech onset to the stop order) above 120 ms for 10 minutes",
    ),
    Alert(
        "VoxlineProviderErrorRateHigh",
        PROVIDER_ERROR_RATIO,
        ">",
        0.05,
        "5m",
        "provider {{ $labels.provider }} fails more than once per 20 reply turns",
    ),
    Alert(
        "VoxlineNatsSlowConsumer",
        "max by (job, instance) (voxline_nats_slow_consumers)",
        ">",
        0,
        "1m",
        "{{ $labels.job }} {{ $labels.instance }} dropped bus messages: a handler falls behind",
    ),
)


def alert_rules() -> dict[str, object]:
    return {"groups": [{"name": "voxline-slo", "rules": [a.rule() for a in ALERTS]}]}


def query(expr: str, legend: str = "", instant: bool = False) -> Dataquery:
    q = Dataquery().expr(expr).legend_format(legend or "__auto").datasource(DATASOURCE)
    return q.instant() if instant else q.range()


AnyPanel = TypeVar("AnyPanel", timeseries.Panel, stat.Panel, heatmap.Panel, bargauge.Panel)


def place(panel: AnyPanel, x: int, y: int, w: int, h: int) -> AnyPanel:
    """Where the panel sits on Grafana's 24-column grid; every panel reads one datasource."""
    return panel.grid_pos(GridPos(h=h, w=w, x=x, y=y)).datasource(DATASOURCE)


def _base(title: str, uid: str, description: str) -> Dashboard:
    return (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["voxline", "generated"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )


def calls_dashboard() -> Dashboard:
    """The main dashboard: calls and outcomes, each stage of a turn, barge-in, errors."""
    per_min = "60 * "
    return (
        _base("Voxline / Calls", "voxline-calls", "Calls, per-stage turn latency, barge-in and provider errors.")
        .with_row(Row("Calls"))
        .with_panel(
            place(stat.Panel().title("Active calls").unit("none"), 0, 1, 4, 6).with_target(
                query("sum(voxline_orchestrator_active_calls)", "active calls")
            )
        )
        .with_panel(
            place(timeseries.Panel().title("Calls ended per minute, by outcome").unit("none"), 4, 1, 10, 6)
            .with_target(query(per_min + f"sum by (outcome) (rate(voxline_calls_total[{RATE}]))", "{{outcome}}"))
            .with_target(query(per_min + f"sum(rate(voxline_orchestrator_refused_calls_total[{RATE}]))", "refused"))
        )
        .with_panel(
            place(timeseries.Panel().title("Turns, interruptions, backchannels, tool calls per minute"), 14, 1, 10, 6)
            .with_target(query(per_min + f'sum(rate(voxline_turns_total{{kind="reply"}}[{RATE}]))', "reply turns"))
            .with_target(query(per_min + f"sum(rate(voxline_interruptions_total[{RATE}]))", "interruptions"))
            .with_target(query(per_min + f"sum(rate(voxline_backchannels_total[{RATE}]))", "backchannels"))
            .with_target(
                query(per_min + f"sum by (kind) (rate(voxline_tool_calls_total[{RATE}]))", "tool calls: {{kind}}")
            )
        )
        .with_row(Row("Turn latency"))
        .with_panel(
            place(
                bargauge.Panel()
                .title("Per-stage latency of reply turns, p50 and p95 (pipeline order)")
                .description("The stages of the call record's turn latency, over the dashboard's time range.")
                .unit("s")
                .orientation(VizOrientation.HORIZONTAL)
                .display_mode(BarGaugeDisplayMode.BASIC)
                .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False)),
                0,
                8,
                12,
                10,
            )
            .with_target(
                query(
                    quantile(0.5, "voxline_turn_stage_seconds", "stage", _stage_selector(), "$__range"),
                    "{{stage}} p50",
                    True,
                )
            )
            .with_target(
                query(
                    quantile(0.95, "voxline_turn_stage_seconds", "stage", _stage_selector(), "$__range"),
                    "{{stage}} p95",
                    True,
                )
            )
        )
        .with_panel(
            place(
                timeseries.Panel()
                .title("Turn latency p50 / p95 (caller's end of speech to first reply audio); greeting p95")
                .unit("s"),
                12,
                8,
                12,
                10,
            )
            .with_target(query(quantile(0.5, "voxline_turn_latency_seconds"), "p50").exemplar(True))
            .with_target(query(quantile(0.95, "voxline_turn_latency_seconds"), "p95").exemplar(True))
            .with_target(query(quantile(0.95, "voxline_turn_stage_seconds", "", _GREETING), "greeting p95"))
        )
        .with_panel(
            place(heatmap.Panel().title("Turn latency heatmap").unit("s"), 0, 18, 12, 9)
            .calculate(False)
            .with_target(
                query(f"sum by (le) (increase(voxline_turn_latency_seconds_bucket[{RATE}]))", "{{le}}").format(
                    PromQueryFormat.HEATMAP
                )
            )
        )
        .with_panel(
            place(
                timeseries.Panel().title("Barge-in: caller's speech onset to voice stop, p50 / p95").unit("s"),
                12,
                18,
                12,
                9,
            )
            .with_target(query(quantile(0.5, "voxline_barge_in_voice_stop_seconds"), "p50").exemplar(True))
            .with_target(query(quantile(0.95, "voxline_barge_in_voice_stop_seconds"), "p95").exemplar(True))
        )
        .with_row(Row("Providers"))
        .with_panel(
            place(
                timeseries.Panel().title("Provider errors per minute, by provider and kind"), 0, 28, 12, 8
            ).with_target(
                query(
                    per_min + f"sum by (provider, kind) (rate(voxline_provider_errors_total[{RATE}]))",
                    "{{provider}} {{kind}}",
                )
            )
        )
        .with_panel(
            place(
                timeseries.Panel().title("Provider errors per reply turn (alert above 0.05)").unit("percentunit"),
                12,
                28,
                12,
                8,
            ).with_target(query(PROVIDER_ERROR_RATIO, "{{provider}}"))
        )
    )


# The greeting's first audio, measured from the media stream's start.
_GREETING = '{stage="first_media_sent", kind="greeting"}'


def _stage_selector() -> str:
    return f'{{kind="reply", stage=~"{STAGE_MATCH}"}}'


def saturation_dashboard() -> Dashboard:
    """How full each service is: CPU, memory, work held per instance, bus backlog."""
    return (
        _base(
            "Voxline / Saturation", "voxline-saturation", "CPU, memory, active work per instance, NATS slow consumers."
        )
        .with_panel(
            place(timeseries.Panel().title("CPU per service (cores)").unit("none"), 0, 0, 12, 8).with_target(
                query(f"sum by (job) (rate(process_cpu_seconds_total[{RATE}]))", "{{job}}")
            )
        )
        .with_panel(
            place(timeseries.Panel().title("Resident memory per service").unit("bytes"), 12, 0, 12, 8).with_target(
                query("sum by (job) (process_resident_memory_bytes)", "{{job}}")
            )
        )
        .with_panel(
            place(timeseries.Panel().title("Active calls per instance"), 0, 8, 12, 8)
            .with_target(query("sum by (instance) (voxline_orchestrator_active_calls)", "orchestrator {{instance}}"))
            .with_target(query("sum by (instance) (voxline_gateway_active_streams)", "gateway {{instance}}"))
            .with_target(query("sum by (instance) (voxline_stt_active_calls)", "stt {{instance}}"))
        )
        .with_panel(
            place(timeseries.Panel().title("Work in progress per instance"), 12, 8, 12, 8)
            .with_target(query("sum by (instance) (voxline_brain_active_turns)", "brain turns {{instance}}"))
            .with_target(query("sum by (instance) (voxline_tts_active_sentences)", "tts sentences {{instance}}"))
        )
        .with_panel(
            place(
                timeseries.Panel().title("NATS slow consumers (subscriptions that dropped messages)"), 0, 16, 24, 7
            ).with_target(query("sum by (job, instance) (voxline_nats_slow_consumers)", "{{job}} {{instance}}"))
        )
    )


DASHBOARDS = {"voxline-calls": calls_dashboard, "voxline-saturation": saturation_dashboard}
