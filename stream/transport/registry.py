"""Schema registry support: subjects by topic, start-up compatibility check, registration.

Any Confluent-API-compatible registry works (Confluent Schema Registry, Apicurio Registry's
``/apis/ccompat/v7``, Karapace); the client is confluent-kafka's
:class:`~confluent_kafka.schema_registry.SchemaRegistryClient`, which :class:`RegistryClient`
extends only to remember its URLs and credentials for the two requests it has no method for
(verbose compatibility reasons, Apicurio's import).  Subjects follow the Confluent default
TopicNameStrategy (events: ``<topic>-value``), except the alerts' official schema, which goes
under Rubin's subject ``lsst-alerts-v{M.m}-value`` with Rubin's id (:func:`ensure_rubin_schema`).

At start-up a writer calls :func:`ensure_schema`: if the subject already has versions, the
registry is asked whether our schema is compatible with the latest one under the subject's
compatibility level, and an incompatible schema stops the process (:class:`SchemaIncompatible`)
before anything is produced; then the schema is registered (or looked up, with
``register=False``) and its id goes into every message's 5-byte header
(:mod:`stream.transport.wire`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import time
import urllib.error
import urllib.request
import zipfile
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
    "ensure_rubin_schema",
    "RegistryClient",
    "fetch_schema",
    "registry_status",
]

# Fail fast on a dead registry: the client's defaults (3 retries, back-off up to 20 s) would
# hold `diffstream check` or a worker's start-up for a minute before saying anything.
_CLIENT_DEFAULTS: dict[str, Any] = {"timeout": 10, "max.retries": 1, "retries.wait.ms": 200}
_NOT_FOUND = (40401, 40402, 40403)  # subject / version / schema not found
log = logging.getLogger("diffstream.registry")


class RegistryError(ConfigError):
    """The registry cannot be reached, or refused a request (status and code in ``fields``)."""


class SchemaIncompatible(RegistryError):
    """Our schema breaks the subject's compatibility rule with its latest version."""


class RegistryClient(SchemaRegistryClient):
    """confluent's client, plus the base URLs and basic-auth credentials it was made with."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.urls = [u.strip().rstrip("/") for u in str(conf["url"]).split(",") if u.strip()]
        self.basic_auth = conf.get("basic.auth.user.info")

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, Any]:
        """(HTTP status, decoded JSON or None) of ``method`` on ``path`` (absolute, or
        relative to the API base URL); the first URL that answers wins."""
        last: Exception | None = None
        for base in self.urls:
            url = path if path.startswith("http") else f"{base}/{path.lstrip('/')}"
            headers = {"Accept": "application/json"}
            if content_type:
                headers["Content-Type"] = content_type
            if self.basic_auth:
                token = base64.b64encode(str(self.basic_auth).encode()).decode()
                headers["Authorization"] = f"Basic {token}"
            req = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
            try:
                with urllib.request.urlopen(req, timeout=_CLIENT_DEFAULTS["timeout"]) as resp:  # noqa: S310
                    raw = resp.read()
                    return resp.status, json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                raw = exc.read()
                try:
                    return exc.code, json.loads(raw) if raw else None
                except ValueError:
                    return exc.code, None
            except (OSError, ValueError) as exc:
                last = exc
        raise RegistryError(f"schema registry at {','.join(self.urls)} unreachable: {last}")


def make_client(url: str, *, config: Mapping[str, Any] | None = None) -> RegistryClient:
    """A registry client for ``url`` (comma-separated http(s) URLs fail over).

    ``config`` passes confluent client properties through unchanged (``basic.auth.user.info``,
    ``ssl.ca.location``, ``timeout``, ``max.retries`` ...).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"schema registry url must be a non-empty string, got {url!r}")
    bad = [u for u in url.split(",") if not u.strip().startswith(("http://", "https://"))]
    if bad:
        raise ConfigError(f"schema registry urls must be http(s)://..., got {bad}")
    conf = {**_CLIENT_DEFAULTS, **(config or {}), "url": url.strip()}
    try:
        return RegistryClient(conf)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid schema registry settings for {url!r}: {exc}") from exc


def client_from_settings(settings: Any) -> RegistryClient | None:
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
    return ",".join(getattr(client, "urls", None) or ["(unknown url)"])


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
    # test_compatibility() returns only the verdict; the reasons come with verbose=true, which
    # the client has no method for.  Any failure here just means "no details".
    if not isinstance(client, RegistryClient):
        return []
    try:
        path = f"compatibility/subjects/{subject}/versions/latest?verbose=true"
        body = json.dumps(schema.to_dict()).encode()
        _, answer = client.request("POST", path, body, "application/vnd.schemaregistry.v1+json")
        return [str(m) for m in (answer or {}).get("messages") or []]
    except Exception:
        return []


def check_compatibility(
    client: SchemaRegistryClient, subject: str, schema: Schema
) -> tuple[bool, list[str]]:
    """(compatible, reasons): our schema against the subject's latest version.

    A subject without versions accepts anything: (True, []).
    """
    if _latest_version(client, subject) is None:
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


# -- Rubin's subject and id ------------------------------------------------------------------
# Rubin's registry holds alert schema vM.m under id M*100+m (syncAllSchemasToRegistry.py puts a
# Confluent registry in IMPORT mode and posts the id).  Apicurio's Confluent-compatible API
# ignores a requested id (a POST with "id": 1101 answers id 1; Apicurio 3.0.9), but its admin
# import API (/apis/registry/v3/admin/import) keeps the content and global ids of the archive
# it is given (apicurio.import.preserveContentId/preserveGlobalId, both true by default), and
# the ccompat id *is* the content id; compose/registry-local.sh starts it with
# apicurio.import.requireEmptyRegistry=false so that this works beside other subjects.  So we
# try, in order: the schema already there; Apicurio's import with the id; a Confluent POST with
# the id (honoured in IMPORT mode, ignored elsewhere).  Whatever id results frames the alerts;
# one that is not Rubin's is logged as a WARNING with the mapping.  Newer Apicurio (3.3.x,
# Java 21) was not needed for this.  tests/integration/test_rubin_compat.py checks the id.
_CCOMPAT = "/apis/ccompat/"


def _apicurio_archive(subject: str, schema_str: str, schema_id: int) -> bytes:
    """A one-artifact Apicurio 3 export archive: ``subject`` in the default group, version 1,
    content and global id ``schema_id`` (the layout Apicurio's own export writes)."""
    content = schema_str.encode()
    digest = hashlib.sha256(content).hexdigest()
    now = int(time.time() * 1000)
    art = f"groups/default/artifacts/{subject}"
    entries: dict[str, Any] = {
        f"manifest-{now}.Manifest.json": {
            "systemVersion": "3", "systemName": "diffstream", "systemDescription": "",
            "exportVersion": "3.0", "exportedOn": now, "exportedBy": "", "dbVersion": "101",
        },
        f"content/{digest}.Content.json": {
            "contentId": schema_id, "canonicalHash": digest, "contentHash": digest,
            "artifactType": None, "contentType": "application/json", "serializedReferences": None,
        },
        f"{art}/MetaData.Artifact.json": {
            "groupId": None, "artifactId": subject, "artifactType": "AVRO", "name": None,
            "description": None, "labels": None, "owner": "", "createdOn": now,
            "modifiedBy": "", "modifiedOn": now,
        },
        f"{art}/versions/1.ArtifactVersion.json": {
            "globalId": schema_id, "groupId": None, "artifactId": subject, "version": "1",
            "versionOrder": 1, "state": "ENABLED", "name": None, "description": None,
            "owner": "", "labels": None, "createdOn": now, "modifiedBy": "", "modifiedOn": now,
            "contentId": schema_id,
        },
        f"{art}/branches/latest.Branch.json": {
            "groupId": None, "artifactId": subject, "branchId": "latest", "description": None,
            "systemDefined": True, "owner": "", "createdOn": now, "modifiedBy": "",
            "modifiedOn": now, "versions": ["1"],
        },
    }  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, entry in entries.items():
            zf.writestr(name, json.dumps(entry))
        zf.writestr(f"content/{digest}.Content.data", content)
    return buf.getvalue()


def _import_with_id(client: RegistryClient, subject: str, schema_str: str, schema_id: int) -> str:
    """Try Apicurio's admin import of ``subject`` under ``schema_id``; a word on the result."""
    base = next((u for u in client.urls if _CCOMPAT in u), None)
    if base is None:
        return "not an Apicurio ccompat URL"
    root = base[: base.index(_CCOMPAT)]
    archive = _apicurio_archive(subject, schema_str, schema_id)
    status, answer = client.request(
        "POST", f"{root}/apis/registry/v3/admin/import", archive, "application/zip"
    )
    if 200 <= status < 300:
        return "imported"
    detail = (answer or {}).get("detail") or (answer or {}).get("message") or answer
    return f"import refused (HTTP {status}: {detail})"


def _lookup_id(client: SchemaRegistryClient, subject: str, schema: Schema) -> int | None:
    try:
        found = client.lookup_schema(subject, schema)
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404 or exc.error_code in _NOT_FOUND:
            return None
        raise _describe(exc, _url(client), f"look up the schema under {subject}") from exc
    except Exception as exc:
        raise _describe(exc, _url(client), f"look up the schema under {subject}") from exc
    return None if found.schema_id is None else int(found.schema_id)


def ensure_rubin_schema(
    client: SchemaRegistryClient,
    schema_json: Mapping[str, Any],
    *,
    subject: str,
    schema_id: int,
    register: bool = True,
) -> int:
    """The registry's id of the official alert schema under Rubin's ``subject``, putting it
    there under Rubin's ``schema_id`` where the registry can hold a chosen id (see above).

    ``register=False`` only looks it up (RegistryError when absent).  An id other than
    ``schema_id`` is returned with a WARNING that gives the mapping.
    """
    schema = avro_schema(schema_json)
    url = _url(client)
    how = "already registered"
    got = _lookup_id(client, subject, schema)
    if got is None and not register:
        raise RegistryError(
            f"the official alert schema is not registered under {subject} at {url} and this "
            "producer may not register it",
            subject=subject,
        )
    if got is None and isinstance(client, RegistryClient):
        how = _import_with_id(client, subject, schema.schema_str or "", schema_id)
        got = _lookup_id(client, subject, schema)
    if got is None:
        body = {"schema": schema.schema_str, "schemaType": "AVRO", "id": schema_id}
        if isinstance(client, RegistryClient):
            status, answer = client.request(
                "POST", f"subjects/{subject}/versions", json.dumps(body).encode(),
                "application/vnd.schemaregistry.v1+json",
            )  # fmt: skip
            if not 200 <= status < 300 or not isinstance(answer, dict) or "id" not in answer:
                raise RegistryError(
                    f"schema registry at {url} refused to register the official alert schema "
                    f"under {subject}: HTTP {status}: {answer}",
                    http_status=status,
                )
            got = int(answer["id"])
        else:
            got = int(client.register_schema(subject, schema))
        how += "; registered through the Confluent API"
    if got != schema_id:
        log.warning(
            "schema registry at %s holds the official alert schema under %s with id %d, not "
            "Rubin's id %d (%s): alerts are framed with %d; a reader keyed on Rubin's ids "
            "(lsst.alert.packet.SchemaRegistry) must map %d -> %d",
            url, subject, got, schema_id, how, got, got, schema_id,
        )  # fmt: skip
    else:
        log.info("official alert schema under %s at %s, id %d (%s)", subject, url, got, how)
    return got


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
        status.compatibility = str(client.get_compatibility())
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
