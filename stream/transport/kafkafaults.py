"""Kafka client faults and group state for the stream worker (issue 16), apart from the
transport's delivery logic (stream.transport.kafka, which re-exports these names).

- :func:`is_fatal` / :class:`FatalKafkaError`: client states no retry can cure.
- :func:`fatal_hint`: what an operator should look at for one.
- :func:`read_group_lag`: the group's unprocessed events, for ``--exit-when-idle`` and
  ``/healthz``.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from diffstream.stream.ops.settings import Settings

__all__ = [
    "FatalKafkaError",
    "is_fatal",
    "fatal_hint",
    "read_group_lag",
    "warn_if_instance_held",
]

log = logging.getLogger("diffstream.kafka")

# No retry cures these: the worker must stop and be restarted (issue 16).  ``_FATAL`` is how
# librdkafka reports a fatal consumer state (e.g. "Static consumer fenced by other consumer with
# same group.instance.id") on the message path, with ``fatal()`` False; the authentication and
# authorization codes are retried for ever by librdkafka, so a worker with a wrong password
# would otherwise sit "healthy" and consume nothing.
_FATAL_CODES = {
    KafkaError._FATAL,
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.FENCED_INSTANCE_ID,
    KafkaError._AUTHENTICATION,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


class FatalKafkaError(KafkaException):
    """A client state no retry can cure; the worker stops (exit 1) to be restarted."""


def is_fatal(err: KafkaError) -> bool:
    """True for an error after which the client can do nothing more (see ``_FATAL_CODES``)."""
    return bool(err.fatal()) or err.code() in _FATAL_CODES


def fatal_hint(err: KafkaError, settings: Settings) -> str:
    code = err.code()
    text = str(err)
    if code == KafkaError.FENCED_INSTANCE_ID or "group.instance.id" in text:
        return (
            f" (hint: another consumer joined group {settings.group_id!r} with this worker's "
            f"--instance-id {settings.instance_id!r}, or the session expired during a broker "
            "outage; give every replica its own --instance-id)"
        )
    if code in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED) or "fenced" in text.lower():
        return (
            " (hint: another producer uses this transactional id: two workers with the same "
            "--instance-id, or a newer replica of this one)"
        )
    if "AUTH" in err.name():
        return " (hint: check the SASL/SSL credentials and ACLs given with -X)"
    return ""


def read_group_lag(
    consumer: Consumer, topic: str, held: set[tuple[str, int]], *, timeout: float = 2.0
) -> int | None:
    """Events of ``topic`` the consumer's group has not processed: committed offset to end
    over every partition (for a partition in ``held``, the consumer's position if further),
    read from the broker.  None when the broker does not answer within ``timeout`` per call."""
    try:
        md = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(md.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout)}
        mine = [tp for tp in tps if (topic, tp.partition) in held]
        position = {tp.partition: tp.offset for tp in consumer.position(mine)} if mine else {}
        lag = 0
        for tp in tps:
            lo, hi = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
            done = max(committed.get(tp.partition, -1), position.get(tp.partition, -1))
            # No commit yet: the group starts at the earliest offset (auto.offset.reset).
            lag += max(0, hi - (done if done >= 0 else lo))
        return lag
    except (KafkaException, RuntimeError) as exc:
        log.debug("group lag not read: %s", exc)
        return None


def warn_if_instance_held(
    conf: dict, group: str, instance_id: str, *, timeout: float = 5.0
) -> bool:
    """Before joining: a WARNING if a member of ``group`` already holds ``instance_id``; True
    then.  The broker cannot tell a live twin from the member a kill -9 left behind, and
    taking that member's place at once is what static membership is for, so the start goes
    on: a live twin is fenced and exits 1 with a CRITICAL line, this worker says why here."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({k: v for k, v in conf.items() if not k.startswith(("group.", "enable."))})
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(
            timeout=timeout
        )
    except Exception as exc:  # noqa: BLE001 - a missing group or a slow broker: nothing to say
        log.debug("describe group %s: %s", group, exc)
        return False
    for member in desc.members:
        if member.group_instance_id == instance_id:
            log.warning(
                "--instance-id %r is held in group %r by member %s (client %s, host %s): taking "
                "it over; if that worker is alive it is fenced and exits 1 (give every replica "
                "its own --instance-id), if it was killed this is the intended fast restart",
                instance_id,
                group,
                member.member_id,
                member.client_id,
                member.host,
            )
            return True
    return False
