"""Wire formats (stream.transport.wire) and registry helpers (stream.transport.registry), without
a real registry.

The Confluent framing is checked byte for byte, and against confluent-kafka's own
AvroSerializer/AvroDeserializer over its in-process mock registry client, used here as a test
double (answering compatibility questions itself): the product has no branch for it.  What
needs a registry's behaviour (Rubin's ids, compatibility rules) is tested against the real one
in tests/integration/test_registry.py and test_rubin_compat.py.
"""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from hypothesis import given, settings
from hypothesis import strategies as st

from diffstream.schemas import fingerprint, load_json
from diffstream.stream.alerts.packets import (
    ALERT_SCHEMA,
    LSST_SCHEMA,
    dia_source_record,
    make_alert,
    serialize_alert,
)
from diffstream.stream.ops.errors import BadEvent, ConfigError
from diffstream.stream.transport.events import (
    EVENT_SCHEMA,
    encode_event,
    encode_single_object,
    make_event,
)
from diffstream.stream.transport.registry import (
    RegistryError,
    SchemaIncompatible,
    avro_schema,
    ensure_schema,
    make_client,
    registry_status,
    subject_for,
)
from diffstream.stream.transport.wire import (
    FINGERPRINT_HEADER,
    MAGIC_BYTE,
    PREFIX_LEN,
    RUBIN_SCHEMA_ID,
    RUBIN_SUBJECT,
    RegistryDeserializer,
    RegistrySerializer,
    SchemalessDeserializer,
    SchemalessSerializer,
    WireError,
    alert_codec,
    event_codec,
    frame,
    header_value,
    official_schema_json,
    reencode,
    rubin_schema_id,
    rubin_subject,
    unframe,
    worker_codecs,
)

pytestmark = pytest.mark.unit

ALERT_FP = fingerprint(ALERT_SCHEMA)


def make_test_alert(index: int = 0, *, flux: float = 1234.5) -> dict:
    row = {
        "diaSourceId": 1_099_511_627_776 + index,
        "x": 100.25 + index,
        "y": 80.5,
        "ra": 150.0 + 1e-4 * index,
        "dec": -30.0,
        "psfFlux": flux,
        "psfFluxErr": 56.5,
        "snr": 21.75,
        "isNegative": flux < 0,
        "psfNdata": 441,
        "trailNdata": 0,
        "dipoleNdata": 0,
        "bboxSize": 21,
    }
    source = dia_source_record(
        row,
        visit=7,
        detector=3,
        midpoint_mjd_tai=60841.5,
        band="r",
        time_processed_mjd_tai=60841.6,
        exposure_time=30.0,
    )
    return make_alert(source, cutouts={"cutoutDifference": b"D" * 64}, task_metadata=None)


def make_test_event(**kw) -> dict:
    return make_event(
        "/data/sci.fits",
        "/data/tmpl.fits",
        visit=7,
        detector=3,
        exposure_id=7,
        request_id="r-1",
        produced_at_ms=1_700_000_000_000,
        **kw,
    )


class CompatMock(MockSchemaRegistryClient):
    """The mock lacks test_compatibility (it would make an HTTP call): answer it here."""

    def __init__(self, compatible: bool = True) -> None:
        super().__init__({"url": "mock://compat"})
        self.compatible = compatible
        self.asked: list[str] = []

    def test_compatibility(self, subject_name, schema, version="latest", **kw):  # noqa: ARG002
        self.asked.append(subject_name)
        return self.compatible

    def get_compatibility(self, subject_name=None):  # noqa: ARG002
        return "BACKWARD"


@pytest.fixture
def mock_registry():
    return CompatMock()


# -- framing, byte for byte -----------------------------------------------------------------
def test_frame_layout_is_magic_then_big_endian_id_then_body():
    assert frame(1, b"\x02\x03") == b"\x00\x00\x00\x00\x01\x02\x03"
    assert frame(0x01020304, b"") == bytes([0, 1, 2, 3, 4])
    assert frame(2**32 - 1, b"x") == b"\x00\xff\xff\xff\xffx"
    assert PREFIX_LEN == 5 and MAGIC_BYTE == 0


def test_unframe_splits_id_and_body():
    assert unframe(b"\x00\x00\x00\x01\x00body") == (256, b"body")
    assert unframe(bytearray(b"\x00\x00\x00\x00\x07")) == (7, b"")


def test_frame_rejects_non_int_id():
    with pytest.raises(TypeError, match="schema_id must be an int, got str"):
        frame("1", b"")


def test_frame_rejects_bool_id():
    with pytest.raises(TypeError, match="schema_id must be an int, got bool"):
        frame(True, b"")


def test_frame_rejects_out_of_range_id():
    with pytest.raises(ValueError, match=r"schema_id must be in \[0, 4294967295\], got -1"):
        frame(-1, b"")
    with pytest.raises(ValueError, match="got 4294967296"):
        frame(2**32, b"")


def test_unframe_wrong_magic_byte():
    with pytest.raises(WireError, match="not in the Confluent wire format.*starting 0100000001"):
        unframe(b"\x01\x00\x00\x00\x01abc")


def test_unframe_too_short():
    with pytest.raises(WireError, match="got 4 bytes") as info:
        unframe(b"\x00\x00\x00\x01")
    assert info.value.fields["reason"] == "not_framed"


def test_unframe_tombstone():
    with pytest.raises(WireError, match="None \\(a tombstone\\)") as info:
        unframe(None)
    assert info.value.fields["reason"] == "not_bytes"
    assert isinstance(info.value, BadEvent)  # the worker dead-letters it like any bad event


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_frame_unframe_round_trip(schema_id, body):
    data = frame(schema_id, body)
    assert data[1:5] == struct.pack(">I", schema_id)
    assert unframe(data) == (schema_id, body)


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=32))
def test_unframe_arbitrary_bytes_only_raises_wire_error(data):
    try:
        schema_id, body = unframe(data)
    except WireError:
        assert len(data) < 5 or data[0] != 0
    else:
        assert data == frame(schema_id, body)


# -- headers --------------------------------------------------------------------------------
class _Msg:
    def __init__(self, headers):
        self._headers = headers

    def headers(self):
        return self._headers


def test_header_value_reads_every_context_shape():
    pairs = [("a", b"1"), (FINGERPRINT_HEADER, b"abc"), (FINGERPRINT_HEADER, b"last")]
    ctx = SerializationContext("t", MessageField.VALUE, pairs)
    assert header_value(ctx, FINGERPRINT_HEADER) == b"last"
    assert header_value(pairs, "a") == b"1"
    assert header_value({"a": "text"}, "a") == b"text"
    assert header_value(_Msg(pairs), "a") == b"1"
    assert header_value(_Msg(None), "a") is None
    assert header_value(None, "a") is None


# -- schemaless with fingerprint header -----------------------------------------------------
def test_schemaless_serializer_is_serialize_alert_plus_header():
    alert = make_test_alert()
    ser = SchemalessSerializer(ALERT_SCHEMA)
    assert ser(alert, None) == serialize_alert(alert)
    assert ser.headers == ((FINGERPRINT_HEADER, ALERT_FP.encode()),)


def test_schemaless_round_trip_with_header():
    alert = make_test_alert()
    codec = alert_codec("alerts", wire_format="schemaless")
    data = codec.serialize(alert, None)
    assert codec.mode == "schemaless"
    assert codec.deserialize(data, list(codec.headers)) == alert


def test_schemaless_resolves_to_lsst_reader_schema():
    alert = make_test_alert()
    codec = alert_codec("alerts", reader_schema=LSST_SCHEMA)
    got = codec.deserialize(codec.serialize(alert, None), list(codec.headers))
    assert "diffstreamMetadata" not in got
    assert got["diaSource"]["psfFlux"] == alert["diaSource"]["psfFlux"]


def test_schemaless_wrong_fingerprint_is_refused_before_decoding():
    event_bytes = encode_event(make_test_event())
    de = SchemalessDeserializer(ALERT_SCHEMA)
    fp = fingerprint(EVENT_SCHEMA)
    with pytest.raises(WireError, match=f"schema fingerprint {fp}.*expects lsst.v11_1.alert") as e:
        de(event_bytes, [(FINGERPRINT_HEADER, fp.encode())])
    assert e.value.fields["reason"] == "schema_mismatch"


def test_schemaless_without_header_other_schema_is_an_error_not_garbage():
    # An event's bytes happen to start like a long; decoding them as an alert must fail.
    de = SchemalessDeserializer(ALERT_SCHEMA)
    with pytest.raises(WireError, match="no fingerprint header") as e:
        de(encode_event(make_test_event())[10:], None)
    assert e.value.fields["reason"] == "undecodable"


def test_schemaless_left_over_bytes_are_an_error():
    data = serialize_alert(make_test_alert()) + b"\x00"
    with pytest.raises(WireError, match="1 of .* bytes are left over"):
        SchemalessDeserializer(ALERT_SCHEMA)(data, [(FINGERPRINT_HEADER, ALERT_FP.encode())])


def test_schemaless_confluent_framed_bytes_are_not_silently_decoded():
    data = frame(1, serialize_alert(make_test_alert()))
    with pytest.raises(WireError):
        SchemalessDeserializer(ALERT_SCHEMA)(data, [(FINGERPRINT_HEADER, ALERT_FP.encode())])


def test_schemaless_reader_names_single_object_events_as_the_wrong_schema():
    fp = fingerprint(EVENT_SCHEMA)
    with pytest.raises(WireError, match=f"single-object encoded with schema fingerprint {fp}") as e:
        SchemalessDeserializer(ALERT_SCHEMA)(encode_event(make_test_event()), None)
    assert e.value.fields["reason"] == "schema_mismatch"


def test_schemaless_reader_accepts_single_object_alerts():
    alert = make_test_alert()
    data = encode_single_object(ALERT_SCHEMA, ALERT_FP, alert)
    assert SchemalessDeserializer(ALERT_SCHEMA)(data, None) == alert


def test_schemaless_reader_hints_at_the_registry_for_framed_bytes():
    data = frame(3, serialize_alert(make_test_alert()))
    with pytest.raises(
        WireError, match=r"Confluent wire format \(schema id 3\).*--schema-registry"
    ):
        SchemalessDeserializer(ALERT_SCHEMA)(data, None)


# -- registry: our bytes are confluent's bytes ----------------------------------------------
@pytest.mark.parametrize(
    ("name", "record", "topic"),
    [
        ("diffstream.alert", make_test_alert(), "alerts"),
        ("diffstream.event", make_test_event(), "exposures"),
    ],
)
def test_registry_bytes_equal_confluent_avro_serializer(mock_registry, name, record, topic):
    ours = RegistrySerializer(mock_registry, subject_for(topic), load_json(name))
    data = ours(record, None)
    theirs = AvroSerializer(
        mock_registry, avro_schema(name).schema_str, conf={"auto.register.schemas": True}
    )
    ctx = SerializationContext(topic, MessageField.VALUE)
    expected = theirs(record, ctx)
    assert data == expected
    assert data[0] == 0 and unframe(data)[0] == ours.schema_id
    # Confluent's deserializer reads ours, and ours reads theirs.
    back = AvroDeserializer(mock_registry)(data, ctx)
    assert back["diaSourceId" if name == "diffstream.alert" else "requestId"] == (
        record["diaSourceId"] if name == "diffstream.alert" else record["requestId"]
    )
    parsed = ALERT_SCHEMA if name == "diffstream.alert" else EVENT_SCHEMA
    assert RegistryDeserializer(mock_registry, parsed)(expected, None) == (
        record if name == "diffstream.alert" else back
    )


def test_alert_codec_default_is_rubin_framing_of_the_official_schema():
    # What packageAlerts.py sends: magic byte 0, id 1101 (11*100 + 1), the official schema's
    # body; our trailing diffstreamMetadata is not written.
    alert = make_test_alert()
    alert["diffstreamMetadata"] = None
    codec = alert_codec("alerts")
    data = codec.serialize(alert, None)
    assert codec.mode == "confluent" and RUBIN_SCHEMA_ID == 1101
    assert data[:PREFIX_LEN] == b"\x00\x00\x00\x04\x4d"
    body = io.BytesIO(data[PREFIX_LEN:])
    assert fastavro.schemaless_reader(body, LSST_SCHEMA, None)["diaSource"] == alert["diaSource"]
    assert body.tell() == len(data) - PREFIX_LEN  # no byte of a trailing field
    assert codec.deserialize(data, None) == alert
    assert codec.headers == ((FINGERPRINT_HEADER, fingerprint(LSST_SCHEMA).encode()),)


def test_rubin_ids_and_subjects_follow_the_schema_name():
    assert rubin_schema_id("lsst.v11_1.alert") == 1101
    assert rubin_schema_id("lsst/lsst.v7_0.alert") == 700
    assert rubin_subject("lsst.v11_1.alert") == "lsst-alerts-v11.1-value" == RUBIN_SUBJECT
    with pytest.raises(ValueError, match="not an LSST alert schema name"):
        rubin_schema_id("diffstream.alert")
    with pytest.raises(ValueError, match="does not fit Rubin's id scheme"):
        rubin_schema_id("lsst.v1_100.alert")


def test_official_schema_json_is_self_contained_with_each_type_defined_once():
    text = json.dumps(official_schema_json())
    assert "__fastavro" not in text
    assert text.count('"name": "lsst.v11_1.diaSource"') == 1
    assert fingerprint(fastavro.parse_schema(json.loads(text))) == fingerprint(LSST_SCHEMA)


def test_alert_codec_rejects_an_unknown_wire_format():
    with pytest.raises(ValueError, match="wire_format must be one of"):
        alert_codec("alerts", wire_format="json")


def test_framed_reader_without_registry_refuses_an_unknown_id():
    data = frame(7, serialize_alert(make_test_alert()))
    with pytest.raises(WireError, match="schema id 7 is not one this reader knows") as e:
        alert_codec("alerts").deserialize(data, None)
    assert e.value.fields["reason"] == "unknown_schema_id"


def test_registry_alert_codec_registers_the_official_schema_under_rubins_subject(mock_registry):
    # The mock assigns its own ids (1): the frames carry the registry's id, with a WARNING.
    alert = make_test_alert()
    codec = alert_codec("alerts", registry=mock_registry)
    data = codec.serialize(alert, None)
    assert codec.subject == "lsst-alerts-v11.1-value"
    assert mock_registry.get_subjects() == ["lsst-alerts-v11.1-value"]
    assert unframe(data) == (1, alert_codec("alerts").serialize(alert, None)[PREFIX_LEN:])
    assert codec.deserialize(data, None) == alert


def test_registry_alert_read_with_lsst_reader_schema(mock_registry):
    alert = make_test_alert(flux=-500.0)
    data = alert_codec("alerts", registry=mock_registry).serialize(alert, None)
    got = alert_codec("alerts", registry=mock_registry, reader_schema=LSST_SCHEMA).deserialize(
        data, None
    )
    assert got["diaSource"]["psfFlux"] == -500.0 and "diffstreamMetadata" not in got


def test_registry_wrong_schema_is_a_clear_error(mock_registry):
    # An event framed with the event schema's id, read by an alert reader.
    event_data = event_codec("exposures", registry=mock_registry).serialize(make_test_event())
    reader = alert_codec("alerts", registry=mock_registry)
    with pytest.raises(
        WireError, match=r"schema id 1\).*diffstream.ExposureEvent.*cannot be read as lsst"
    ) as e:
        reader.deserialize(event_data, None)
    assert e.value.fields["reason"] == "schema_mismatch"


def test_registry_unknown_schema_id(mock_registry):
    data = frame(999, serialize_alert(make_test_alert()))
    with pytest.raises(WireError, match="schema id 999 is not in the registry") as e:
        RegistryDeserializer(mock_registry, ALERT_SCHEMA)(data, None)
    assert e.value.fields["reason"] == "unknown_schema_id"


def test_registry_reader_refuses_unframed_bytes(mock_registry):
    with pytest.raises(WireError, match="written without a schema registry"):
        alert_codec("alerts", registry=mock_registry).deserialize(
            serialize_alert(make_test_alert()), None
        )


def test_registry_garbled_body(mock_registry):
    codec = alert_codec("alerts", registry=mock_registry)
    data = codec.serialize(make_test_alert(), None)
    with pytest.raises(WireError, match="cannot decode .* bytes \\(schema id 1\\)") as e:
        codec.deserialize(data[:40], None)
    assert e.value.fields["reason"] == "undecodable"


def test_registry_event_codec_validates(mock_registry):
    codec = event_codec("exposures", registry=mock_registry)
    event = make_test_event()
    assert codec.deserialize(codec.serialize(event, None), None) == event
    bad = dict(event, exposureId=-1)
    raw = RegistrySerializer(mock_registry, "exposures-value", load_json("diffstream.event"))(bad)
    with pytest.raises(BadEvent, match="exposureId must be in"):
        codec.deserialize(raw, None)


def test_event_codec_without_registry_is_single_object():
    codec = event_codec("exposures")
    data = codec.serialize(make_test_event(), None)
    assert codec.mode == "single-object" and data[:2] == b"\xc3\x01"
    assert codec.deserialize(data, None)["requestId"] == "r-1"


def test_reencode_registry_event_to_single_object(mock_registry):
    source = event_codec("exposures", registry=mock_registry)
    target = event_codec("exposures")
    value, headers = reencode(source.serialize(make_test_event(), None), source, target)
    assert value == encode_event(make_test_event()) and headers == ()


def test_serializing_an_invalid_record_names_the_schema(mock_registry):
    ser = RegistrySerializer(mock_registry, "alerts-value", load_json("diffstream.alert"))
    with pytest.raises(ValueError, match="record does not match schema lsst.v11_1.alert"):
        ser({"diaSourceId": "not a long"}, None)


# -- registry helpers -----------------------------------------------------------------------
def test_codec_ensure_registers_once_and_returns_the_id(mock_registry):
    codec = alert_codec("alerts", registry=mock_registry)
    first = codec.ensure()
    assert first == codec.ensure() == 1
    assert alert_codec("alerts").ensure() == RUBIN_SCHEMA_ID  # no registry: Rubin's id
    assert alert_codec("alerts", wire_format="schemaless").ensure() is None


def test_ensure_schema_checks_compatibility_when_the_subject_has_versions():
    client = CompatMock(compatible=True)
    schema = avro_schema("diffstream.alert")
    assert ensure_schema(client, "a-value", schema) == 1
    assert client.asked == []  # a new subject accepts anything
    assert ensure_schema(client, "a-value", schema) == 1
    assert client.asked == ["a-value"]


def test_ensure_schema_refuses_an_incompatible_schema():
    client = CompatMock(compatible=True)
    client.register_schema("a-value", avro_schema("diffstream.event"))
    client.compatible = False
    with pytest.raises(
        SchemaIncompatible,
        match="lsst.v11_1.alert is not compatible .* subject a-value .*BACKWARD",
    ):
        ensure_schema(client, "a-value", avro_schema("diffstream.alert"))


def test_ensure_schema_lookup_only_needs_a_registered_schema(mock_registry):
    with pytest.raises(RegistryError, match="refused to look up lsst.v11_1.alert under x-value"):
        ensure_schema(mock_registry, "x-value", avro_schema("diffstream.alert"), register=False)
    sid = ensure_schema(mock_registry, "x-value", avro_schema("diffstream.alert"))
    assert (
        ensure_schema(mock_registry, "x-value", avro_schema("diffstream.alert"), register=False)
        == sid
    )


def test_subject_for_uses_topic_name_strategy():
    assert subject_for("alerts") == "alerts-value"
    with pytest.raises(ValueError, match="topic must be a non-empty string"):
        subject_for("")


def test_make_client_rejects_empty_url():
    with pytest.raises(ConfigError, match="schema registry url must be a non-empty string"):
        make_client(" ")


def test_make_client_rejects_bad_url():
    with pytest.raises(ConfigError, match=r"schema registry urls must be http\(s\)://"):
        make_client("ftp://x")
    with pytest.raises(ConfigError, match="schema registry urls must be"):
        make_client("mock://unit")  # confluent's mock is a test double, not a registry


def test_registry_status_of_an_unreachable_registry():
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    status = registry_status(make_client("http://127.0.0.1:9", config={"max.retries": 0}))
    assert not status.reachable
    assert "unreachable" in status.error and "127.0.0.1:9" in status.error


def test_registry_status_lists_subjects_and_latest(mock_registry):
    alert_codec("alerts", registry=mock_registry).ensure()
    status = registry_status(mock_registry, subjects=[RUBIN_SUBJECT, "none-value"])
    assert status.reachable and status.subjects == [RUBIN_SUBJECT]
    assert status.latest == {RUBIN_SUBJECT: (1, 1), "none-value": None}


def test_avro_schema_text_is_the_file_json():
    schema = avro_schema("diffstream.event")
    assert schema.schema_type == "AVRO"
    assert json.loads(schema.schema_str) == load_json("diffstream.event")


def test_registry_reader_also_reads_marked_schemaless_alerts(mock_registry):
    # A topic moving to the registry: older schemaless alerts (with the fingerprint header)
    # stay readable; framed ones are read through the registry.
    alert = make_test_alert()
    plain = alert_codec("alerts", wire_format="schemaless")
    reader = alert_codec("alerts", registry=mock_registry)
    assert reader.deserialize(plain.serialize(alert, None), list(plain.headers)) == alert
    assert reader.deserialize(reader.serialize(alert, None), list(reader.headers)) == alert


def test_worker_codecs_without_a_registry_frame_alerts_as_rubin_does():
    from diffstream.stream.ops.settings import Settings

    events, alerts = worker_codecs(Settings())
    event, alert = make_test_event(), make_test_alert()
    assert events.serialize(event, None) == encode_event(event)
    assert unframe(alerts.serialize(alert, None))[0] == RUBIN_SCHEMA_ID
    _, plain = worker_codecs(Settings(alert_wire_format="schemaless"))
    assert plain.serialize(alert, None) == serialize_alert(alert)
    assert plain.headers == ((FINGERPRINT_HEADER, ALERT_FP.encode()),)
