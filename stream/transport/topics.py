"""The worker's output topics: created and sized on purpose, checked before the worker starts.

A broker that auto-creates topics gives each the broker's default size (``num.partitions``,
1 on the local test broker), not the size an alert stream needs: Rubin's alert topic has 45
partitions, so 45 consumers of a broker's group can share it.  ``diffstream topics create``
makes the three output topics with :func:`default_specs` (sizes below, overridable), through
the AdminClient; :func:`check_output_topics` runs at the worker's start and refuses to go on
when a topic is missing and nothing would create it.

=================  ==========  =========  ======================================================
topic              partitions  retention  why
=================  ==========  =========  ======================================================
alerts (output)    45          7 days     Rubin's alert topic's partition count; a week of
                                          alerts for a broker that was down over a weekend
dead letters       3           30 days    rare; kept long enough for a person to look at them
metadata           3           30 days    one summary per exposure, keyed by exposureId
=================  ==========  =========  ======================================================

Every topic is created with ``compression.type=producer`` (the broker keeps the producer's
snappy batches as they are, as Rubin's topics do) and the broker's default replication factor
unless one is given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffstream.stream.ops.errors import ConfigError

__all__ = [
    "ALERT_PARTITIONS",
    "TopicSpec",
    "default_specs",
    "parse_duration_ms",
    "create_topics",
    "check_output_topics",
]

log = logging.getLogger("diffstream.topics")

ALERT_PARTITIONS = 45  # Rubin's alert topic
ALERT_RETENTION_MS = 7 * 24 * 3600 * 1000
AUX_PARTITIONS = 3
AUX_RETENTION_MS = 30 * 24 * 3600 * 1000
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


@dataclass(frozen=True)
class TopicSpec:
    """One topic to create: name, partitions, retention [ms] (-1: for ever), extra config."""

    name: str
    partitions: int
    retention_ms: int
    config: Mapping[str, str] = field(default_factory=dict)

    def topic_config(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "compression.type": "producer",
            **{str(k): str(v) for k, v in self.config.items()},
        }


def parse_duration_ms(text: str | int) -> int:
    """``7d``, ``36h``, ``90m``, ``3600s``, ``500ms``, ``2w`` or plain milliseconds -> ms;
    ``-1`` / ``forever`` -> -1 (Kafka's "keep for ever")."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        raw = str(text).strip().lower()
        if raw in ("-1", "forever", "infinite"):
            return -1
        found = re.fullmatch(r"(\d+)\s*(ms|s|m|h|d|w)?", raw)
        if found is None:
            raise ValueError(
                f"retention must be a duration such as 7d, 36h, 90m, 3600s or milliseconds, "
                f"got {text!r}"
            )
        value = int(found[1]) * _UNITS_MS[found[2] or "ms"]
    if value < 1 and value != -1:
        raise ValueError(f"retention must be positive (or -1 for ever), got {value} ms")
    return value


def default_specs(
    settings: Any,
    *,
    partitions: int = ALERT_PARTITIONS,
    retention_ms: int = ALERT_RETENTION_MS,
    aux_partitions: int = AUX_PARTITIONS,
    aux_retention_ms: int = AUX_RETENTION_MS,
) -> list[TopicSpec]:
    """The alert, dead-letter and metadata topics of ``settings`` with these sizes."""
    for name, value in (("partitions", partitions), ("aux_partitions", aux_partitions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return [
        TopicSpec(settings.output_topic, partitions, retention_ms),
        TopicSpec(settings.dlq_topic, aux_partitions, aux_retention_ms),
        TopicSpec(settings.metadata_topic, aux_partitions, aux_retention_ms),
    ]


def create_topics(
    admin: Any,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int = -1,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create ``specs`` with ``admin`` (a confluent AdminClient); name -> ``created`` or
    ``exists (N partitions)`` (an existing topic is left as it is, and said so).  Any other
    failure raises ConfigError naming the topic and the broker's reason."""
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewTopic

    specs = list(specs)
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=replication_factor,
            config=s.topic_config(),
        )
        for s in specs
    ]
    result: dict[str, str] = {}
    futures = admin.create_topics(new, request_timeout=timeout, operation_timeout=timeout)
    for spec in specs:
        try:
            futures[spec.name].result(timeout)
            result[spec.name] = "created"
        except Exception as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "code", lambda: None)() == KafkaError.TOPIC_ALREADY_EXISTS:
                md = admin.list_topics(spec.name, timeout=timeout).topics.get(spec.name)
                n = len(md.partitions) if md is not None else "?"
                result[spec.name] = f"exists ({n} partitions)"
                continue
            raise ConfigError(f"could not create topic {spec.name}: {exc}") from exc
    return result


def _auto_create_enabled(client: Any, md: Any, conf: Mapping[str, Any], timeout: float) -> bool:
    """Whether producing to a missing topic would create it: the client allows it
    (``allow.auto.create.topics``, librdkafka's default true for producers) and the broker
    does (``auto.create.topics.enable``; unknown when its config cannot be read: False)."""
    if str(conf.get("allow.auto.create.topics", "true")).strip().lower() != "true":
        return False
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = client if isinstance(client, AdminClient) else None
    if admin is None:
        keep = ("bootstrap.", "security.", "sasl.", "ssl.", "client.id")
        admin = AdminClient({k: v for k, v in conf.items() if k.startswith(keep)})
    try:
        broker = ConfigResource(ConfigResource.Type.BROKER, str(md.controller_id))
        described = admin.describe_configs([broker], request_timeout=timeout)
        entries = described[broker].result(timeout)
        entry = entries.get("auto.create.topics.enable")
        return entry is not None and str(entry.value).strip().lower() == "true"
    except Exception as exc:  # no DescribeConfigs permission, old broker: cannot tell
        log.warning("cannot read the broker's auto.create.topics.enable: %s", exc)
        return False


def check_output_topics(
    client: Any, topics: Iterable[str], *, conf: Mapping[str, Any], timeout: float = 10.0
) -> list[str]:
    """The missing ones among ``topics``; raises ConfigError when any is missing and nothing
    would create it, else warns that the broker will create it with its default size.

    ``client`` is a Producer or AdminClient (its ``list_topics``), ``conf`` its configuration
    (read for ``allow.auto.create.topics`` and, to ask the broker, the connection settings).
    """
    try:
        md = client.list_topics(timeout=timeout)
    except Exception as exc:
        raise ConfigError(f"cannot list the broker's topics to check the outputs: {exc}") from exc
    missing = [t for t in dict.fromkeys(topics) if t not in md.topics]
    if not missing:
        return []
    hint = "create them with `diffstream topics create` (45 partitions for the alerts)"
    if not _auto_create_enabled(client, md, conf, timeout):
        raise ConfigError(
            f"output topic(s) {missing} do not exist and topic auto-creation is off (broker "
            f"auto.create.topics.enable or client allow.auto.create.topics): {hint}",
            topics=missing,
        )
    log.warning(
        "output topic(s) %s do not exist: the broker will create them with its default "
        "partition count; %s",
        missing,
        hint,
    )
    return missing
