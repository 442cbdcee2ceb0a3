"""The Azure definitions declare exactly what the exporter sends."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from exporters import build_exporters, load_config
from exporters.schemas import ALERTS, SCHEMAS, TableSchema
from tests.exporters.conftest import (
    FakeClock,
    ReceiverServer,
    StaticCredential,
    health_record,
    kpi_row,
    transition_row,
)

TEMPLATE = Path(__file__).parents[2] / "infra" / "azure" / "orderpulse-monitor.json"
JSON_TYPES = {
    "string": (str,),
    "long": (int,),
    "real": (float, int),
    "boolean": (bool,),
    "datetime": (str,),
    "dynamic": (dict, list),
}


def resources(kind: str) -> list[dict[str, Any]]:
    template = json.loads(TEMPLATE.read_text())
    return [r for r in template["resources"] if r["type"] == kind]


def declared_streams() -> dict[str, list[dict[str, str]]]:
    (dcr,) = resources("Microsoft.Insights/dataCollectionRules")
    declarations = dcr["properties"]["streamDeclarations"]
    return {name: body["columns"] for name, body in declarations.items()}


def sent_records(
    server: ReceiverServer, ca_bundle: Path, tmp_path: Path
) -> dict[str, list[dict[str, Any]]]:
    config = load_config(
        {
            "ORDERPULSE_LOGS_ENDPOINT": server.url,
            "ORDERPULSE_LOGS_DCR_ID": "dcr-infra",
            "ORDERPULSE_EXPORTERS_CA_BUNDLE": str(ca_bundle),
        }
    )
    hub = build_exporters(
        config,
        tmp_path,
        FakeClock(),
        credential=StaticCredential("t"),
        console=io.StringIO(),
    )
    resolved = transition_row("resolved")
    hub.publish_alerts([transition_row("firing"), resolved], [])
    hub.publish_kpis([kpi_row()])
    hub.publish_health(health_record())
    hub.drain()
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for request in server.received:
        stream = request.path.split("/streams/")[1].split("?")[0]
        by_stream.setdefault(stream, []).extend(request.json())
    return by_stream


def test_declared_stream_columns_equal_what_the_exporter_sends(
    server_204: ReceiverServer, ca_bundle: Path, tmp_path: Path
) -> None:
    declared = declared_streams()
    sent = sent_records(server_204, ca_bundle, tmp_path)
    assert set(declared) == set(sent) == {s.stream for s in SCHEMAS}
    for stream, records in sent.items():
        columns = declared[stream]
        for record in records:
            assert list(record) == [c["name"] for c in columns], stream
            for column in columns:
                value = record[column["name"]]
                if value is not None:
                    assert isinstance(value, JSON_TYPES[column["type"]]), (
                        stream,
                        column,
                    )
                if column["type"] == "long":
                    assert not isinstance(value, bool)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.table)
def test_tables_and_data_flows_match_the_streams(schema: TableSchema) -> None:
    tables = {
        r["properties"]["schema"]["name"]: r["properties"]["schema"]["columns"]
        for r in resources("Microsoft.OperationalInsights/workspaces/tables")
    }
    table_columns = [(c["name"], c["type"].lower()) for c in tables[schema.table]]
    stream_columns = [(c["name"], c["type"]) for c in declared_streams()[schema.stream]]
    assert table_columns == stream_columns
    assert ("TimeGenerated", "datetime") in table_columns
    (dcr,) = resources("Microsoft.Insights/dataCollectionRules")
    flows = [
        f for f in dcr["properties"]["dataFlows"] if f["streams"] == [schema.stream]
    ]
    assert [f["outputStream"] for f in flows] == [schema.stream]


def test_the_log_alert_watches_the_alerts_table_and_pages_the_action_group() -> None:
    (rule,) = resources("Microsoft.Insights/scheduledQueryRules")
    (group,) = resources("Microsoft.Insights/actionGroups")
    query = rule["properties"]["criteria"]["allOf"][0]["query"]
    assert query.startswith(ALERTS.table)
    for column in ("State", "Severity", "Fingerprint", "Rule", "RunbookUrl"):
        assert column in ALERTS.column_names
        assert column in query
    assert group["properties"]["groupShortName"]
    (action,) = rule["properties"]["actions"]["actionGroups"]
    assert "Microsoft.Insights/actionGroups" in action
