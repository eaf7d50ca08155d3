"""``diffstream check``: is the broker (and the schema registry) ready for the worker?

Checks, each printed as one ``[ OK ]``, ``[WARN]`` or ``[FAIL]`` line:

1. broker reachable: cluster metadata within the timeout (brokers, controller, cluster id);
2. each topic exists, with its partition count and the operations this client may perform on
   it (KIP-430 authorized operations); a role that needs READ (input) or WRITE (outputs) and
   lacks it fails;
3. ACLs visible to this client (``describe_acls``); a broker without an authorizer, or a
   principal not allowed to describe ACLs, is reported as such, not as a failure;
4. the consumer group's state and permitted operations;
5. with a registry URL: reachability, compatibility level, subjects, and for each topic whose
   values we write or read through the registry the latest version of ``<topic>-value`` and
   whether our schema is compatible with it.

Exit status 0 when no check failed, 1 otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Check", "TopicRole", "run_checks", "format_checks", "ROLE_NEEDS"]

OK, WARN, FAIL = "OK", "WARN", "FAIL"

# What each role needs on its topic; "extra" topics (--topic) only have to exist.
ROLE_NEEDS = {"input": ("READ",), "output": ("WRITE",), "extra": ()}


@dataclass
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str

    def line(self) -> str:
        return f"[{self.status:^4}] {self.name}: {self.detail}"


@dataclass(frozen=True)
class TopicRole:
    topic: str
    role: str  # input, output or extra
    schema: str | None = None  # schemas/<name> of its values, for the registry check


@dataclass
class _Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        self.checks.append(Check(name, status, detail))


def _ops(ops: Iterable[Any] | None) -> list[str]:
    return sorted(getattr(op, "name", str(op)) for op in (ops or []))


def _kafka_error(exc: Exception) -> tuple[str, str]:
    """(error name, text) of a KafkaException or anything else."""
    err: Any = exc.args[0] if exc.args else None
    if hasattr(err, "name") and hasattr(err, "str"):
        return str(err.name()), str(err.str())
    return type(exc).__name__, str(exc)


def _check_broker(admin: Any, bootstrap: str, timeout: float, rep: _Report) -> Any | None:
    t0 = time.monotonic()
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception as exc:
        name, text = _kafka_error(exc)
        rep.add(
            f"broker {bootstrap}",
            FAIL,
            f"unreachable within {timeout:g} s ({name}: {text}); check the address, the "
            "listener the broker advertises, and the security settings (-X)",
        )
        return None
    if not md.brokers:
        rep.add(f"broker {bootstrap}", FAIL, "answered but listed no brokers")
        return None
    brokers = ", ".join(f"{b.id}@{b.host}:{b.port}" for b in md.brokers.values())
    rep.add(
        f"broker {bootstrap}",
        OK,
        f"{len(md.brokers)} broker(s) [{brokers}], controller {md.controller_id}, "
        f"cluster {md.cluster_id}, {len(md.topics)} topics visible "
        f"({time.monotonic() - t0:.2f} s)",
    )
    return md


def _check_topics(
    admin: Any, md: Any, roles: list[TopicRole], timeout: float, rep: _Report
) -> None:
    from confluent_kafka import TopicCollection

    present = [r for r in roles if r.topic in md.topics and md.topics[r.topic].error is None]
    for r in roles:
        if r not in present:
            t = md.topics.get(r.topic)
            why = "does not exist" if t is None else f"error {t.error}"
            rep.add(
                f"topic {r.topic} ({r.role})",
                FAIL,
                f"{why}; create it (e.g. kafka-topics --create --topic {r.topic} "
                "--partitions N) or fix the topic name",
            )
    if not present:
        return
    names = sorted({r.topic for r in present})
    try:
        futures = admin.describe_topics(
            TopicCollection(names), include_authorized_operations=True, request_timeout=timeout
        )
    except Exception as exc:  # an old broker: fall back to metadata only
        futures = {}
        name, text = _kafka_error(exc)
        rep.add("topic permissions", WARN, f"describe_topics failed ({name}: {text})")
    for r in present:
        t = md.topics[r.topic]
        parts = len(t.partitions)
        replicas = {len(p.replicas) for p in t.partitions.values()}
        detail = f"{parts} partition(s), replication {'/'.join(map(str, sorted(replicas)))}"
        ops: list[str] | None = None
        fut = futures.get(r.topic)
        if fut is not None:
            try:
                desc = fut.result(timeout=timeout)
                raw = desc.authorized_operations
                ops = None if raw is None else _ops(raw)
            except Exception as exc:
                name, text = _kafka_error(exc)
                detail += f"; permissions unknown ({name}: {text})"
        needs = ROLE_NEEDS.get(r.role, ())
        if ops is None:
            note = "; the broker did not report permitted operations" if needs else ""
            rep.add(f"topic {r.topic} ({r.role})", WARN if needs else OK, detail + note)
            continue
        missing = [n for n in needs if n not in ops and "ALL" not in ops]
        detail += f"; permitted: {', '.join(ops) or 'none'}"
        if missing:
            rep.add(f"topic {r.topic} ({r.role})", FAIL, detail + f"; MISSING {', '.join(missing)}")
        else:
            rep.add(f"topic {r.topic} ({r.role})", OK, detail)


def _check_acls(admin: Any, timeout: float, rep: _Report) -> None:
    from confluent_kafka.admin import (
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    anything: Any = None  # None matches any name/principal/host (the stubs say str)
    flt = AclBindingFilter(
        ResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    try:
        bindings = admin.describe_acls(flt, request_timeout=timeout).result(timeout=timeout)
    except Exception as exc:
        name, text = _kafka_error(exc)
        if name == "SECURITY_DISABLED":
            rep.add("ACLs", WARN, "the broker has no authorizer: every client may do everything")
        elif "AUTHORIZATION" in name:
            rep.add(
                "ACLs",
                WARN,
                f"this client may not describe ACLs ({name}); "
                "the per-topic permitted operations above are what it may do",
            )
        else:
            rep.add("ACLs", WARN, f"describe_acls unsupported or failed ({name}: {text})")
        return
    if not bindings:
        rep.add("ACLs", OK, "no ACL bindings visible to this client (none set, or no authorizer)")
        return
    sample = "; ".join(
        f"{b.permission_type.name} {b.principal} {b.operation.name} {b.restype.name}:{b.name}"
        for b in bindings[:5]
    )
    more = f" (+{len(bindings) - 5} more)" if len(bindings) > 5 else ""
    rep.add("ACLs", OK, f"{len(bindings)} binding(s) visible: {sample}{more}")


def _check_group(admin: Any, group: str, timeout: float, rep: _Report) -> None:
    try:
        futures = admin.describe_consumer_groups(
            [group], include_authorized_operations=True, request_timeout=timeout
        )
        desc = futures[group].result(timeout=timeout)
    except Exception as exc:
        name, text = _kafka_error(exc)
        status = FAIL if "AUTHORIZATION" in name else WARN
        rep.add(f"group {group}", status, f"cannot describe ({name}: {text})")
        return
    state = getattr(desc.state, "name", str(desc.state))
    ops = desc.authorized_operations
    if state == "DEAD" and not desc.members:
        detail = "no such group yet (created by the first worker), state DEAD"
    else:
        detail = f"state {state}, {len(desc.members)} member(s)"
    if ops is not None:
        detail += f"; permitted: {', '.join(_ops(ops)) or 'none'}"
    rep.add(f"group {group}", OK, detail)


def _check_registry(
    url: str, roles: list[TopicRole], auth: str | None, timeout: float, rep: _Report
) -> None:
    from diffstream.stream.ops.errors import ConfigError
    from diffstream.stream.transport.registry import (
        avro_schema,
        check_compatibility,
        make_client,
        registry_status,
        subject_for,
    )

    config: dict[str, Any] = {"timeout": timeout}
    if auth:
        config["basic.auth.user.info"] = auth
    try:
        client = make_client(url, config=config)
    except ConfigError as exc:
        rep.add(f"schema registry {url}", FAIL, exc.message)
        return

    def subject_schema(r: TopicRole) -> tuple[str, Any, str]:
        if r.schema == "diffstream.alert":
            # Alerts carry the official schema under Rubin's subject (stream/transport/wire.py).
            from diffstream.stream.transport.wire import RUBIN_SUBJECT, official_schema_json

            return RUBIN_SUBJECT, official_schema_json(), "official alert schema"
        return subject_for(r.topic), r.schema, str(r.schema)

    subjects = [subject_schema(r)[0] for r in roles if r.schema]
    status = registry_status(client, subjects=subjects)
    if not status.reachable:
        rep.add(f"schema registry {url}", FAIL, status.error or "unreachable")
        return
    rep.add(
        f"schema registry {url}",
        OK,
        f"reachable, compatibility {status.compatibility or 'unknown'}, "
        f"{len(status.subjects)} subject(s)",
    )
    for r in roles:
        if not r.schema:
            continue
        subject, schema, what = subject_schema(r)
        latest = status.latest.get(subject)
        if latest is None:
            status_ = WARN if r.role == "input" else OK
            rep.add(f"subject {subject}", status_, "no versions yet (the first writer registers)")
            continue
        version, schema_id = latest
        try:
            ok, reasons = check_compatibility(client, subject, avro_schema(schema))
        except ConfigError as exc:
            rep.add(
                f"subject {subject}",
                WARN,
                f"version {version} (id {schema_id}); compatibility not checked: {exc.message}",
            )
            continue
        head = f"version {version} (id {schema_id}); our {what}"
        if what == "official alert schema":
            from diffstream.stream.transport.wire import RUBIN_SCHEMA_ID

            if schema_id != RUBIN_SCHEMA_ID:
                head += f" (id is not Rubin's {RUBIN_SCHEMA_ID}: alerts are framed with it)"
        if ok:
            rep.add(f"subject {subject}", OK, f"{head} is compatible")
        else:
            why = "; ".join(reasons) or "no details from the registry"
            rep.add(f"subject {subject}", FAIL, f"{head} is NOT compatible: {why}")


def run_checks(
    admin: Any,
    *,
    bootstrap: str,
    roles: list[TopicRole],
    group: str | None = None,
    registry_url: str | None = None,
    registry_auth: str | None = None,
    timeout: float = 10.0,
) -> list[Check]:
    """Every check, in order; stops after the broker check if the broker is unreachable
    (the registry is still checked)."""
    rep = _Report()
    md = _check_broker(admin, bootstrap, timeout, rep)
    if md is not None:
        _check_topics(admin, md, roles, timeout, rep)
        _check_acls(admin, timeout, rep)
        if group:
            _check_group(admin, group, timeout, rep)
    if registry_url:
        _check_registry(registry_url, roles, registry_auth, timeout, rep)
    return rep.checks


def format_checks(checks: list[Check]) -> str:
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    verdict = "ready" if not failed else "NOT ready"
    return "\n".join(
        [c.line() for c in checks] + [f"{verdict}: {failed} failed, {warned} warning(s)"]
    )
