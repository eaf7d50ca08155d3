"""Our Kafka alert topic read the way Rubin's consumers read theirs (issue 15).

The worker runs for real (Kafka transport, simulated exposure pair on disk, the product's
codecs as ``diffstream run`` builds them) into topics made by ``diffstream topics create``;
the alerts are then read with the official ``lsst-alert-packet`` package only:

1. strip the 5-byte prefix (magic byte 0, 4-byte big-endian schema id);
2. look the id up in ``lsst.alert.packet.SchemaRegistry`` (Rubin's ids: major*100 + minor);
3. deserialize with that schema;
4. open the three cutouts with ``astropy.nddata.CCDData.read``.

Once without a registry and once against the real registry (Apicurio from
compose/registry-local.sh), where the official schema must sit under Rubin's subject and id.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.nddata import CCDData, VarianceUncertainty
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from lsst.alert.packet import SchemaRegistry

from diffstream.stream.cli.main import main
from diffstream.stream.ops.errors import ConfigError
from diffstream.stream.ops.settings import Settings
from diffstream.stream.sim.fits import write_pair
from diffstream.stream.sim.simulate import simulate_pair
from diffstream.stream.transport.events import encode_event, make_event
from diffstream.stream.transport.kafka import KafkaTransport, client_configs
from diffstream.stream.transport.records import decode_summary
from diffstream.stream.transport.registry import client_from_settings, fetch_schema, make_client
from diffstream.stream.transport.service import Worker, run_loop
from diffstream.stream.transport.wire import (
    RUBIN_SCHEMA_ID,
    RUBIN_SUBJECT,
    event_codec,
    worker_codecs,
)
from tests.integration import test_tools as tools
from tests.integration.test_registry import registry_url  # noqa: F401 - the fixture

consume, produce = tools.consume, tools.produce
WAIT_S = 120.0


def _rubin_registry() -> SchemaRegistry:
    """What a Rubin consumer builds: every official schema version it knows, by Rubin's id."""
    return SchemaRegistry.all_schemas_from_filesystem()


def _make_topics(bootstrap: str, stem: str, *, partitions: int = 45) -> Settings:
    tag = f"it-rubin-{stem}-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap_servers=bootstrap,
        input_topic=f"{tag}-events",
        output_topic=f"{tag}-alerts",
        dlq_topic=f"{tag}-dlq",
        metadata_topic=f"{tag}-meta",
        group_id=f"{tag}-group",
    )
    rc = main([
        "topics", "create", "--bootstrap-servers", bootstrap,
        "--output-topic", settings.output_topic, "--dlq-topic", settings.dlq_topic,
        "--metadata-topic", settings.metadata_topic, "--partitions", str(partitions),
        "--retention", "2d",
    ])  # fmt: skip
    assert rc == 0
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(settings.input_topic, 1, 1)])[settings.input_topic].result(30)
    tools._ready(admin, settings.input_topic, 1)
    return settings


def _run_worker(settings: Settings, root: Path) -> tuple[list[Any], float, float]:
    """One event through the real worker; (alert messages, time before, time after)."""
    event = make_event(
        str(root / "science.fits"), str(root / "template.fits"),
        visit=4242, detector=7, exposure_id=4242, request_id="rubin-compat",
        produced_at_ms=int(time.time() * 1000),
    )  # fmt: skip
    settings = settings.model_copy(update={"data_roots": [str(root)]})
    events, alerts = worker_codecs(settings)  # as `diffstream run` builds its worker
    registry = client_from_settings(settings)
    value = (
        encode_event(event)
        if registry is None
        else event_codec(settings.input_topic, registry=registry).serialize(event, None)
    )
    produce(settings.bootstrap_servers, settings.input_topic, [{"value": value}])
    worker = Worker(settings, event_decoder=events.deserialize, alert_serializer=alerts.serialize)
    transport = KafkaTransport(settings, worker=worker.worker_id)
    t0 = time.time()
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["stats"] = run_loop(worker, transport, max_messages=1, exit_when_idle=WAIT_S)
        except BaseException as exc:  # surfaced below
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the worker did not finish its event in time"
    finally:
        transport.close()
    if "error" in result:
        raise result["error"]
    stats = result["stats"]
    assert (stats.done, stats.failed) == (1, 0), stats.line()
    messages = consume(settings.bootstrap_servers, settings.output_topic, stats.alerts)
    assert len(messages) == stats.alerts > 3
    return messages, t0, time.time()


@pytest.fixture(scope="module")
def pair_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rubin-compat")
    pair = simulate_pair(seed=15, shape=(256, 256), n_stars=60, n_transients=8)
    write_pair(pair, root)
    return root


def _read_like_rubin(messages: list[Any], t0: float, t1: float) -> list[dict[str, Any]]:
    registry = _rubin_registry()
    alerts = []
    for msg in messages:
        value = msg.value()
        magic, schema_id = struct.unpack(">bI", value[:5])  # 1. the 5-byte prefix
        assert magic == 0
        schema = registry.get_by_id(schema_id)  # 2. Rubin's id -> the official schema
        alert = schema.deserialize(value[5:])  # 3. deserialize
        assert alert["diaSourceId"] == alert["diaSource"]["diaSourceId"]
        assert "diffstreamMetadata" not in alert  # the body is the official schema's
        for name in ("cutoutDifference", "cutoutScience", "cutoutTemplate"):
            ccd = CCDData.read(io.BytesIO(alert[name]))  # 4. cutouts as CCDData
            assert ccd.unit == u.nJy
            assert isinstance(ccd.uncertainty, VarianceUncertainty)
            assert ccd.uncertainty.array.shape == ccd.data.shape == ccd.mask.shape
            assert 30 <= ccd.data.shape[0] == ccd.data.shape[1] <= 102
            assert ccd.psf is not None and ccd.psf.dtype.itemsize == 4
            assert ccd.psf.shape[0] <= min(21, ccd.data.shape[0])
            c = ccd.psf.shape[0] // 2
            peak = np.unravel_index(np.nanargmax(np.abs(ccd.psf)), ccd.psf.shape)
            assert abs(peak[0] - c) <= 1 and abs(peak[1] - c) <= 1
            # The WCS puts the source at the cutout's centre (within a pixel).
            px, py = ccd.wcs.world_to_pixel_values(
                alert["diaSource"]["ra"], alert["diaSource"]["dec"]
            )
            half = (ccd.data.shape[0] - 1) / 2
            assert abs(px - half) <= 1.0 and abs(py - half) <= 1.0
            assert np.all(ccd.uncertainty.array[np.isfinite(ccd.uncertainty.array)] > 0)
        headers = dict(msg.headers())
        stamp = int(headers["producer_timestamp"]) / 1e6
        assert t0 <= stamp <= t1
        for key in ("configHash", "versionsHash", "method", "exposureId"):
            assert headers[f"diffstream.{key}"]
        alerts.append(alert)
    return alerts


def test_a_rubin_consumer_reads_our_alerts_without_a_registry(kafka_bootstrap, pair_root):
    settings = _make_topics(kafka_bootstrap, "plain")
    messages, t0, t1 = _run_worker(settings, pair_root)
    assert {struct.unpack(">I", m.value()[1:5])[0] for m in messages} == {RUBIN_SCHEMA_ID}
    alerts = _read_like_rubin(messages, t0, t1)
    # Alert size part by part (reported, not a limit; Rubin's ~82 KB average has history).
    sizes = {
        "total": np.mean([len(m.value()) for m in messages]),
        "cutouts": np.mean([sum(len(a[k]) for k in ("cutoutDifference", "cutoutScience",
                                                    "cutoutTemplate")) for a in alerts]),
    }  # fmt: skip
    logging.getLogger("test").info("alert sizes: %s", sizes)
    assert sizes["total"] - sizes["cutouts"] < 2000  # the records: ~1 KB of diaSource


def test_a_rubin_consumer_reads_our_alerts_with_the_registry(
    kafka_bootstrap,
    pair_root,
    registry_url,  # noqa: F811 - the imported fixture
):
    settings = _make_topics(kafka_bootstrap, "registry", partitions=3)
    settings = settings.model_copy(update={"schema_registry_url": registry_url})
    messages, t0, t1 = _run_worker(settings, pair_root)
    assert {struct.unpack(">I", m.value()[1:5])[0] for m in messages} == {RUBIN_SCHEMA_ID}
    _read_like_rubin(messages, t0, t1)
    # The registry holds the official schema under Rubin's subject and id, as Rubin's does.
    client = make_client(registry_url)
    assert RUBIN_SUBJECT == "lsst-alerts-v11.1-value" in client.get_subjects()
    assert client.get_latest_version(RUBIN_SUBJECT).schema_id == RUBIN_SCHEMA_ID
    # The metadata topic's summary names the id the frames carry, and Rubin's.
    (meta,) = consume(kafka_bootstrap, settings.metadata_topic, 1)
    summary = decode_summary(meta.value())
    assert (summary["alertSchemaId"], summary["rubinSchemaId"]) == (RUBIN_SCHEMA_ID,) * 2
    official = _rubin_registry().get_by_id(RUBIN_SCHEMA_ID).definition
    assert fetch_schema(client, RUBIN_SCHEMA_ID)["name"] == official["name"]


def test_topics_create_sizes_the_topics(kafka_bootstrap):
    settings = _make_topics(kafka_bootstrap, "sizes")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=30).topics
    assert len(md[settings.output_topic].partitions) == 45
    assert len(md[settings.dlq_topic].partitions) == len(md[settings.metadata_topic].partitions)
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.output_topic)
    config = admin.describe_configs([res])[res].result(30)
    assert config["retention.ms"].value == str(2 * 86_400_000)
    assert config["compression.type"].value == "producer"


def test_the_worker_refuses_to_start_without_its_output_topic(kafka_bootstrap, caplog):
    missing = f"it-rubin-missing-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        output_topic=missing,
        group_id=f"it-rubin-{uuid.uuid4().hex[:6]}",
        kafka={"allow.auto.create.topics": "false"},
    )
    with pytest.raises(ConfigError, match=rf"\['{missing}'.*auto-creation is off.*topics create"):
        KafkaTransport(settings)
    # With auto-creation on (the local broker's default) it starts, and says what will happen.
    with caplog.at_level(logging.WARNING, logger="diffstream.topics"):
        KafkaTransport(settings.model_copy(update={"kafka": {}})).close()
    assert "will create them with its default partition count" in caplog.text


def test_the_producer_compresses_with_snappy_unless_told_otherwise():
    settings = Settings(bootstrap_servers="127.0.0.1:1")
    assert client_configs(settings)[1]["compression.type"] == "snappy"
    lz4 = settings.model_copy(update={"kafka": {"compression.type": "lz4"}})
    assert client_configs(lz4)[1]["compression.type"] == "lz4"
