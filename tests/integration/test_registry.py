"""The Confluent wire format against a real schema registry (Apicurio Registry's
Confluent-compatible API, started by compose/registry-local.sh) and the real broker.

``SCHEMA_REGISTRY_URL`` names a running registry; otherwise the fixture starts one on a free
port with a state dir under pytest's tmp, and stops it at the end of the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from diffstream.schemas import load_json
from diffstream.stream.alerts.packets import ALERT_SCHEMA, serialize_alert
from diffstream.stream.cli.main import main
from diffstream.stream.transport.events import make_event
from diffstream.stream.transport.registry import (
    SchemaIncompatible,
    ensure_schema,
    fetch_schema,
    make_client,
    subject_for,
)
from diffstream.stream.transport.wire import (
    RUBIN_SCHEMA_ID,
    RUBIN_SUBJECT,
    RegistryDeserializer,
    RegistrySerializer,
    WireError,
    alert_codec,
    event_codec,
    frame,
)
from tests.integration import test_tools as tools
from tests.unit.test_wire import make_test_alert

# The broker helpers and the module-lived topic factory (a fixture) of test_tools.
consume, produce, topics = tools.consume, tools.produce, tools.topics

REGISTRY_LOCAL = Path(__file__).resolve().parents[2] / "compose" / "registry-local.sh"
# A first start may download the registry (~110 MB) with Maven; later ones take seconds.
START_LIMIT_S = 900.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory) -> Iterator[str]:
    given = os.environ.get("SCHEMA_REGISTRY_URL", "").strip()
    if given:
        yield given
        return
    env = {
        **os.environ,
        "REGISTRY_PORT": str(_free_port()),
        "REGISTRY_LOCAL_DIR": str(tmp_path_factory.mktemp("registry-local")),
        "PYTHON": sys.executable,
    }

    def run(command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(REGISTRY_LOCAL), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    started = run("start", START_LIMIT_S)
    if started.returncode != 0:
        run("stop", 60)
        pytest.fail(
            f"compose/registry-local.sh start exited {started.returncode}:\n"
            f"{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    try:
        yield run("url", 30).stdout.strip()
    finally:
        run("stop", 60)


def _schema(fields: list[dict]) -> dict:
    return {"type": "record", "name": "Probe", "namespace": "diffstream.test", "fields": fields}


def test_alerts_round_trip_through_broker_and_registry(registry_url, kafka_bootstrap, topics):
    topic = topics("reg-alerts", 1)
    codec = alert_codec(topic, registry=make_client(registry_url))
    alerts = [make_test_alert(i) for i in range(3)]
    produce(
        kafka_bootstrap,
        topic,
        [{"value": codec.serialize(a, None), "headers": list(codec.headers)} for a in alerts],
    )
    # The real registry holds the official schema under Rubin's subject and Rubin's id (the
    # admin import API), so the frames are the same as without a registry.
    assert codec.ensure() == RUBIN_SCHEMA_ID == 1101
    got = consume(kafka_bootstrap, topic, 3)
    plain = alert_codec(topic)
    assert [m.value() for m in got] == [plain.serialize(a, None) for a in alerts]
    # A fresh client has nothing cached: it fetches the writer schema by id.
    fresh = RegistryDeserializer(make_client(registry_url), ALERT_SCHEMA)
    assert [fresh(m.value(), m) for m in got] == alerts
    theirs = AvroDeserializer(make_client(registry_url))
    ctx = SerializationContext(topic, MessageField.VALUE)
    assert [theirs(m.value(), ctx)["diaSourceId"] for m in got] == [
        a["diaSourceId"] for a in alerts
    ]
    client = make_client(registry_url)
    assert RUBIN_SUBJECT in client.get_subjects()
    assert client.get_latest_version(RUBIN_SUBJECT).schema_id == RUBIN_SCHEMA_ID


def test_rubins_id_is_kept_beside_other_subjects_and_ids_go_on_after_it(registry_url):
    # Registered after others (the registry is not empty), and ids handed out afterwards
    # do not collide with it.
    client = make_client(registry_url)
    subject = f"it-reg-after-{uuid.uuid4().hex[:8]}-value"
    assert alert_codec("x", registry=client).ensure() == RUBIN_SCHEMA_ID
    later = RegistrySerializer(client, subject, _schema([{"name": "z", "type": "int"}])).ensure()
    assert later != RUBIN_SCHEMA_ID
    assert fetch_schema(client, RUBIN_SCHEMA_ID)["name"] == "lsst.v11_1.alert"


def test_an_incompatible_schema_stops_start_up(registry_url):
    client = make_client(registry_url)
    topic = f"it-reg-incompat-{uuid.uuid4().hex[:8]}"
    subject = subject_for(topic)
    client.set_compatibility(subject, "BACKWARD")
    event_codec(topic, registry=client).ensure()  # the subject now holds the event schema
    alert = RegistrySerializer(make_client(registry_url), subject, load_json("diffstream.alert"))
    with pytest.raises(SchemaIncompatible, match=f"not compatible .* subject {subject} .*BACKWARD"):
        alert.ensure()


def test_a_compatible_evolution_is_accepted_and_resolved(registry_url):
    client = make_client(registry_url)
    subject = f"it-reg-evolve-{uuid.uuid4().hex[:8]}-value"
    client.set_compatibility(subject, "BACKWARD")
    v1 = _schema([{"name": "a", "type": "long"}])
    v2 = _schema([{"name": "a", "type": "long"}, {"name": "b", "type": "string", "default": "x"}])
    bad = _schema([{"name": "a", "type": "string"}])
    old = RegistrySerializer(client, subject, v1)
    data = old({"a": 5})
    new = RegistrySerializer(client, subject, v2)
    assert new.ensure() != old.ensure()
    assert RegistryDeserializer(client, new.schema)(data, None) == {"a": 5, "b": "x"}
    with pytest.raises(SchemaIncompatible):
        ensure_schema(client, subject, Schema(json.dumps(bad), "AVRO"))


def test_reading_with_the_wrong_schema_is_a_clear_error(registry_url):
    client = make_client(registry_url)
    topic = f"it-reg-wrong-{uuid.uuid4().hex[:8]}"
    events = event_codec(topic, registry=client)
    event = make_event("/d/s.fits", "/d/t.fits", visit=1, detector=2, exposure_id=3)
    data = events.serialize(event, None)
    with pytest.raises(WireError, match="diffstream.ExposureEvent, which cannot be read as lsst"):
        RegistryDeserializer(make_client(registry_url), ALERT_SCHEMA)(data, None)


def test_an_unknown_schema_id_is_a_clear_error(registry_url):
    data = frame(987_654, serialize_alert(make_test_alert()))
    with pytest.raises(WireError, match="schema id 987654 is not in the registry") as e:
        RegistryDeserializer(make_client(registry_url), ALERT_SCHEMA)(data, None)
    assert e.value.fields["reason"] == "unknown_schema_id"


def test_replay_moves_a_schemaless_topic_to_the_registry(
    registry_url, kafka_bootstrap, topics, capsys
):
    source, target = topics("reg-src", 1), topics("reg-dst", 1)
    plain = alert_codec(source, wire_format="schemaless")
    alerts = [make_test_alert(i) for i in range(4)]
    produce(
        kafka_bootstrap,
        source,
        [{"value": plain.serialize(a, None), "headers": list(plain.headers)} for a in alerts],
    )
    rc = main(
        [
            "replay",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--mode",
            "alerts",
            "--from-topic",
            source,
            "--output-topic",
            target,
            "--schema-registry-url",
            registry_url,
        ]
    )
    assert rc == 0 and "re-published 4, failed 0" in capsys.readouterr().out
    codec = alert_codec(target, registry=make_client(registry_url))
    got = consume(kafka_bootstrap, target, 4)
    assert all(m.value()[0] == 0 for m in got)
    assert [codec.deserialize(m.value(), m) for m in got] == alerts


def test_check_reports_the_registry_and_subjects(
    registry_url, kafka_bootstrap, topics, capsys, monkeypatch
):
    names = {k: topics(f"reg-check-{k}", 1) for k in ("in", "out", "dlq", "meta")}
    for key, env in (("in", "INPUT"), ("out", "OUTPUT"), ("dlq", "DLQ"), ("meta", "METADATA")):
        monkeypatch.setenv(f"DIFFSTREAM_{env}_TOPIC", names[key])
    alert_codec(names["out"], registry=make_client(registry_url)).ensure()
    rc = main(
        ["check", "--bootstrap-servers", kafka_bootstrap, "--schema-registry-url", registry_url]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"[ OK ] schema registry {registry_url}: reachable" in out
    assert f"[ OK ] subject {RUBIN_SUBJECT}: version 1 (id {RUBIN_SCHEMA_ID}); our official" in out
    assert "official alert schema is compatible" in out
    assert f"[WARN] subject {names['in']}-value: no versions yet" in out
    rc = main(
        [
            "check",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--schema-registry-url",
            "http://127.0.0.1:9/apis/ccompat/v7",
            "--timeout",
            "2",
        ]
    )
    assert rc == 1
    assert "[FAIL] schema registry http://127.0.0.1:9/apis/ccompat/v7: " in capsys.readouterr().out
