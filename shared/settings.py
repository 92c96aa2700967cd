"""Typed settings, read from `MLW_*` environment variables when an app is built, never at import.

A `production` profile refuses unsafe values at start: plain-text NATS, no credentials.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import MlwardenError
from shared.storage import FileRoots


class UnsafeSettings(MlwardenError, ValueError):
    """Settings that must not run in the chosen profile."""


class Settings(BaseSettings):
    """Everything a service or the CLI needs to know about its environment."""

    model_config = SettingsConfigDict(env_prefix="MLW_", extra="ignore", frozen=True)

    profile: Literal["dev", "production"] = Field(default="dev", description="dev or production")
    data_dir: Path = Field(default=Path(".mlwarden"), description="all local state lives here")
    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated")
    nats_creds: Path | None = Field(default=None, description="NATS credentials file (.creds)")
    nats_tls_ca: Path | None = Field(default=None, description="CA bundle for NATS TLS")
    audit_db_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in data_dir")
    policy_file: Path | None = Field(default=None, description="registry-gate policy; default in data_dir")
    max_dataset_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="largest dataset read")
    max_artifact_bytes: int = Field(default=64 * 1024**3, gt=0, description="largest artifact hashed")
    declare_topology: bool = Field(
        default=True,
        description=(
            "declare streams, consumers and buckets and register the service key at start; false in a"
            " secured deployment, where only the operator may (`mlwarden keys init --nats URL`)"
        ),
    )
    js_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="copies of each JetStream stream and bucket: 1 on one server, 3 on a three-node cluster",
    )
    fetch_batch: int = Field(default=64, ge=1, le=4096, description="messages per JetStream fetch")
    trust_root: str | None = Field(
        default=None,
        description=(
            "the operator's root public key (base64, PEM, or a file holding either) that signs every"
            " trust-store entry; default: keys/root.pub in the data dir"
        ),
    )
    wait_for_registration: bool = Field(
        default=True,
        description="a service whose key is not in the trust store yet waits for `keys init` instead of exiting",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description=(
            "serve /metrics, /healthz and /readyz over HTTP on this port (0: one the OS picks; unset: off)."
            " `mlwarden up --metrics-port BASE` gives each service BASE + its index"
        ),
    )
    metrics_host: str = Field(
        default="127.0.0.1", description="address the metrics port listens on (0.0.0.0 in a container)"
    )
    actor: str | None = Field(default=None, description="the actor id this process publishes as (producers)")
    actor_key: Path | None = Field(default=None, description="the actor's Ed25519 private key (PEM, mode 0600)")
    file_roots: list[Path] = Field(
        default_factory=list,
        description=(
            "folders services may read file references from (default: the data dir's `files` folder);"
            " the data dir's keys, actors, NATS store, audit database and policy are never readable"
        ),
    )

    @model_validator(mode="after")
    def _refuse_roots_inside_the_data_dir(self) -> Settings:
        # A root inside the data dir but outside its files folder would be refused at every read
        # (`readable_roots`): say so at start instead.
        data_dir, files_dir = self.data_dir.resolve(), self.files_dir.resolve()
        for root in self.file_roots:
            resolved = root.resolve()
            if resolved.is_relative_to(data_dir) and resolved != data_dir and not resolved.is_relative_to(files_dir):
                raise UnsafeSettings(
                    f"file root {root} is inside the data dir, which holds keys and the audit database;"
                    f" use {files_dir} or a folder outside the data dir"
                )
        return self

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.profile == "production":
            urls = [u.strip() for u in self.nats_url.split(",")]
            if not all(u.startswith("tls://") for u in urls):
                raise UnsafeSettings("production profile needs tls:// NATS URLs")
            # Per-identity credentials: a .creds file, or the user and password that
            # `mlwarden nats-config` writes into each identity's MLW_NATS_URL.
            if self.nats_creds is None and not all("@" in u.split("://", 1)[-1] for u in urls):
                raise UnsafeSettings(
                    "production profile needs per-service NATS credentials (MLW_NATS_CREDS or user:password@ URLs)"
                )
            if self.audit_db_url is None or self.audit_db_url.startswith("sqlite"):
                raise UnsafeSettings("production profile needs a server database (MLW_AUDIT_DB_URL)")
        return self

    @property
    def nats_url_redacted(self) -> str:
        """`nats_url` with any password (`mlwarden nats-config` puts one in) shown as `***`:
        what logs and consoles may print."""
        return re.sub(r"(://[^:@/,]+):[^@/,]*@", r"\1:***@", self.nats_url)

    @property
    def nats_identity(self) -> str | None:
        """The NATS user name in `nats_url` (`mlwarden nats-config` gives each identity one)."""
        match = re.search(r"://([^:@/,]+)(?::[^@/,]*)?@", self.nats_url)
        return match.group(1) if match else None

    @property
    def inbox_prefix(self) -> str:
        """Where replies to this process's requests arrive: `_INBOX.<identity>` when it has
        its own NATS user, so no other identity may subscribe to them."""
        identity = self.nats_identity
        return f"_INBOX.{identity}" if identity else "_INBOX"

    @property
    def files_dir(self) -> Path:
        """The data dir's folder for files that events may reference (the default file root)."""
        return self.data_dir / "files"

    @property
    def readable_roots(self) -> FileRoots:
        """Where file references may point: the configured roots, or the data dir's `files`
        folder; never into this deployment's secrets, whatever the roots contain (issue 8)."""
        data_dir = self.data_dir.resolve()
        secrets = [self.keys_dir, self.actors_dir, self.data_dir / "nats", self.registry_policy_path]
        secrets += [p for p in (self.nats_creds, self.actor_key) if p is not None]
        if self.audit_db_url is None:
            secrets.append(self.data_dir / "audit.db")
        return FileRoots(
            allowed=tuple(p.resolve() for p in (self.file_roots or [self.files_dir])),
            protected=tuple(p.resolve() for p in secrets),
            # Nothing else in the data dir either (logs, run files, audit mirror, demo state): an
            # allow-list, so that a file added there later is not readable by default.
            only_within=((data_dir, self.files_dir.resolve()),),
        )

    @property
    def keys_dir(self) -> Path:
        """Service private keys."""
        return self.data_dir / "keys"

    @property
    def actors_dir(self) -> Path:
        """Demo actors' private keys (people keep theirs elsewhere)."""
        return self.data_dir / "actors"

    @property
    def audit_url(self) -> str:
        """The audit database URL."""
        return self.audit_db_url or f"sqlite:///{(self.data_dir / 'audit.db').resolve()}"

    @property
    def registry_policy_path(self) -> Path:
        """registry-gate's policy file."""
        return self.policy_file or (self.data_dir / "registry-policy.yaml")
