"""Schema registry support: subjects by topic, start-up compatibility check, registration.

Any Confluent-API-compatible registry works (Confluent Schema Registry, Apicurio Registry's
``/apis/ccompat/v7``, Karapace); the client is confluent-kafka's
:class:`~confluent_kafka.schema_registry.SchemaRegistryClient` (``mock://...`` gives its
in-process mock).  Subjects follow the Confluent default TopicNameStrategy: the value schema of
topic ``alerts`` lives under ``alerts-value``.

At start-up a writer calls :func:`ensure_schema`: if the subject already has versions, the
registry is asked whether our schema is compatible with the latest one under the subject's
compatibility level, and an incompatible schema stops the process (:class:`SchemaIncompatible`)
before anything is produced; then the schema is registered (or looked up, with
``register=False``) and its id goes into every message's 5-byte header
(:mod:`stream.transport.wire`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from diffstream.schemas import load_json
from diffstream.stream.ops.errors import ConfigError

__all__ = [
    "RegistryError",
    "SchemaIncompatible",
    "RegistryStatus",
    "make_client",
    "client_from_settings",
    "subject_for",
    "avro_schema",
    "check_compatibility",
    "ensure_schema",
    "fetch_schema",
    "registry_status",
]

# Fail fast on a dead registry: the client's defaults (3 retries, back-off up to 20 s) would
# hold `diffstream check` or a worker's start-up for a minute before saying anything.
_CLIENT_DEFAULTS: dict[str, Any] = {"timeout": 10, "max.retries": 1, "retries.wait.ms": 200}
_NOT_FOUND = (40401, 40402, 40403)  # subject / version / schema not found


class RegistryError(ConfigError):
    """The registry cannot be reached, or refused a request (status and code in ``fields``)."""


class SchemaIncompatible(RegistryError):
    """Our schema breaks the subject's compatibility rule with its latest version."""


def make_client(url: str, *, config: Mapping[str, Any] | None = None) -> SchemaRegistryClient:
    """A registry client for ``url`` (comma-separated URLs fail over; ``mock://x`` is the mock).

    ``config`` passes confluent client properties through unchanged (``basic.auth.user.info``,
    ``ssl.ca.location``, ``timeout``, ``max.retries`` ...).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"schema registry url must be a non-empty string, got {url!r}")
    conf = {**_CLIENT_DEFAULTS, **(config or {}), "url": url.strip()}
    try:
        return SchemaRegistryClient.new_client(conf)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid schema registry settings for {url!r}: {exc}") from exc


def client_from_settings(settings: Any) -> SchemaRegistryClient | None:
    """The registry client ``settings`` ask for (``schema_registry_url``, with
    ``schema_registry_auth`` as basic auth), or None without a URL."""
    if not settings.schema_registry_url:
        return None
    config: dict[str, Any] = {}
    if settings.schema_registry_auth is not None:
        config["basic.auth.user.info"] = settings.schema_registry_auth.get_secret_value()
    return make_client(settings.schema_registry_url, config=config)


def subject_for(topic: str) -> str:
    """The value subject of ``topic`` (TopicNameStrategy): ``<topic>-value``."""
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"topic must be a non-empty string, got {topic!r}")
    return f"{topic}-value"


def avro_schema(name_or_json: str | Mapping[str, Any]) -> Schema:
    """A registry ``Schema`` for ``schemas/<name>.avsc`` (by name) or for a JSON definition.

    The registry stores the text we send; sending the file's JSON (docs included) keeps the
    documentation visible to whoever reads the subject.
    """
    definition = load_json(name_or_json) if isinstance(name_or_json, str) else name_or_json
    return Schema(json.dumps(definition, separators=(",", ":")), "AVRO")


def _describe(exc: Exception, url: str, action: str) -> RegistryError:
    if isinstance(exc, SchemaRegistryError):
        return RegistryError(
            f"schema registry at {url} refused to {action}: {exc.error_message} "
            f"(HTTP {exc.http_status_code}, code {exc.error_code})",
            http_status=exc.http_status_code,
            error_code=exc.error_code,
        )
    return RegistryError(
        f"schema registry at {url} unreachable while trying to {action}: "
        f"{type(exc).__name__}: {exc}"
    )


def _url(client: SchemaRegistryClient) -> str:
    conf = getattr(client, "_rest_client", None)
    urls = getattr(conf, "base_urls", None)
    return ",".join(urls) if urls else "mock"


def _latest_version(client: SchemaRegistryClient, subject: str) -> Any | None:
    try:
        return client.get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404 or exc.error_code in _NOT_FOUND:
            return None
        raise _describe(exc, _url(client), f"read subject {subject}") from exc
    except Exception as exc:  # network errors come as httpx exceptions
        raise _describe(exc, _url(client), f"read subject {subject}") from exc


def _verbose_messages(client: SchemaRegistryClient, subject: str, schema: Schema) -> list[str]:
    # test_compatibility() returns only the verdict; the reasons come with verbose=true.  The
    # REST helper is private, so any failure here just means "no details".
    if _is_mock(client):
        return []
    try:
        rest = client._rest_client
        path = f"compatibility/subjects/{subject}/versions/latest?verbose=true"
        response = rest.post(path, body=schema.to_dict())
        return [str(m) for m in response.get("messages") or []]
    except Exception:
        return []


def _is_mock(client: SchemaRegistryClient) -> bool:
    from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
        MockSchemaRegistryClient,
    )

    return isinstance(client, MockSchemaRegistryClient)


def _is_plain_mock(client: SchemaRegistryClient) -> bool:
    return (
        _is_mock(client)
        and type(client).test_compatibility is SchemaRegistryClient.test_compatibility
    )


def check_compatibility(
    client: SchemaRegistryClient, subject: str, schema: Schema
) -> tuple[bool, list[str]]:
    """(compatible, reasons): our schema against the subject's latest version.

    A subject without versions accepts anything: (True, []).
    """
    if _latest_version(client, subject) is None:
        return True, []
    if _is_plain_mock(client):
        # confluent's mock implements no compatibility rules (its test_compatibility makes an
        # HTTP call to the mock:// URL): accept, as its register_schema does.
        return True, []
    try:
        ok = bool(client.test_compatibility(subject, schema))
    except Exception as exc:
        raise _describe(exc, _url(client), f"test compatibility for {subject}") from exc
    return ok, ([] if ok else _verbose_messages(client, subject, schema))


def ensure_schema(
    client: SchemaRegistryClient,
    subject: str,
    schema: Schema,
    *,
    register: bool = True,
    check: bool = True,
) -> int:
    """Our schema's id under ``subject``, registering it if needed; call once at start-up.

    ``check``: ask the registry first whether the schema is compatible with the subject's
    latest version and raise :class:`SchemaIncompatible` if not (the registry would refuse the
    registration anyway, with a less helpful message).  ``register=False`` only looks the
    schema up (for producers without write access to the registry): RegistryError when absent.
    """
    url = _url(client)
    if check:
        ok, reasons = check_compatibility(client, subject, schema)
        if not ok:
            try:
                level = client.get_compatibility(subject)
            except Exception:
                level = "the registry's default"
            detail = "; ".join(reasons) if reasons else "the registry gave no details"
            raise SchemaIncompatible(
                f"schema {_schema_name(schema)} is not compatible with the latest version of "
                f"subject {subject} at {url} (compatibility {level}): {detail}",
                subject=subject,
                reasons=reasons,
            )
    try:
        if register:
            return int(client.register_schema(subject, schema))
        return int(client.lookup_schema(subject, schema).schema_id or 0)
    except Exception as exc:
        action = f"{'register' if register else 'look up'} {_schema_name(schema)} under {subject}"
        raise _describe(exc, url, action) from exc


def fetch_schema(client: SchemaRegistryClient, schema_id: int) -> dict[str, Any]:
    """The JSON definition of the schema with ``schema_id`` (cached by the client)."""
    try:
        schema = client.get_schema(schema_id)
    except Exception as exc:
        raise _describe(exc, _url(client), f"return schema id {schema_id}") from exc
    if (schema.schema_type or "AVRO") != "AVRO":
        raise RegistryError(f"schema id {schema_id} is {schema.schema_type}, not AVRO")
    definition = json.loads(schema.schema_str or "null")
    if not isinstance(definition, dict):
        raise RegistryError(f"schema id {schema_id} is not an Avro record: {schema.schema_str!r}")
    return definition


def _schema_name(schema: Schema) -> str:
    try:
        definition = json.loads(schema.schema_str or "null")
        ns, name = definition.get("namespace"), definition["name"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "(unnamed schema)"
    return name if "." in name or not ns else f"{ns}.{name}"


@dataclass
class RegistryStatus:
    """What `diffstream check` reports about a registry."""

    url: str
    reachable: bool
    error: str | None = None
    compatibility: str | None = None
    subjects: list[str] = field(default_factory=list)
    # subject -> (latest version, schema id), for the subjects asked about
    latest: dict[str, tuple[int, int] | None] = field(default_factory=dict)


def registry_status(
    client: SchemaRegistryClient, *, subjects: list[str] | tuple[str, ...] = ()
) -> RegistryStatus:
    """Reachability, global compatibility level, all subjects, and the latest version of each
    subject in ``subjects`` (None when it has none).  Never raises for a registry problem."""
    url = _url(client)
    try:
        found = sorted(client.get_subjects())
    except Exception as exc:
        return RegistryStatus(url=url, reachable=False, error=_describe(exc, url, "list").message)
    status = RegistryStatus(url=url, reachable=True, subjects=found)
    try:
        # The mock has no config endpoint: its get_compatibility would make an HTTP call.
        status.compatibility = None if _is_mock(client) else str(client.get_compatibility())
    except Exception:
        status.compatibility = None
    for subject in subjects:
        try:
            latest = _latest_version(client, subject)
        except RegistryError as exc:
            status.error = exc.message
            latest = None
        status.latest[subject] = None if latest is None else (latest.version, latest.schema_id)
    return status
