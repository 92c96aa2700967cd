"""A leader lease in a JetStream key-value bucket, with a fencing token (issue 13).

Several replicas of a service that must have one active writer (audit-log's hash chain) elect it
with one key:

- **acquire**: `kv.create(key)` when the key is absent or deleted; otherwise, when the key's
  revision has not changed for `ttl_s` *as this process measured it* (its own monotonic clock,
  so no clocks are compared across machines), `kv.update(key, last=that revision)`. Both are
  compare-and-set: of two standbys only one succeeds.
- **renew**: the holder `kv.update(key, last=its revision)` every `renew_s`. A wrong-last-sequence
  answer means someone else took the lease: lost at once. A holder that could not renew for
  `ttl_s - renew_s` (NATS unreachable) gives up too, before a standby may take over.
- **fencing token**: the revision of the acquiring write. KV revisions only grow, so a later
  holder's token is larger; the protected resource checks the token (audit-log's store refuses a
  batch whose token is not the newest claim), so a holder that was paused past its lease and
  resumes cannot commit even before it notices (Kleppmann, "How to do distributed locking", 2016).

The timings only decide how fast a standby takes over; safety rests on the compare-and-set and
the fencing check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("mlwarden.lease")


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    """How long a lease lasts without renewal and how often it is renewed (and polled)."""

    #: A standby takes over after seeing no renewal for this long.
    ttl_s: float = 10.0
    #: The holder renews, and a standby looks, this often.
    renew_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_s * 2 <= self.ttl_s:
            raise ValueError(f"renew_s ({self.renew_s}) must be positive and at most half of ttl_s ({self.ttl_s})")


def holder_id(service: str) -> str:
    """A name for this process's claim, unique per start: host, pid and a random suffix."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_died_here(value: bytes | None) -> bool:
    """Whether the lease names a process of this host that no longer exists.

    Only a shortcut for the common single-machine restart: the compare-and-set still decides,
    and a mistaken verdict (a reused pid) merely makes a standby wait for the TTL.
    """
    try:
        held = json.loads(value or b"{}")
        host, pid = held.get("host"), held.get("pid")
    except (ValueError, AttributeError):
        return False
    if host != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists (another user's process): alive as far as we can tell
    return False


class KvLease:
    """One contender for the lease `key` in bucket `kv`.

    `token` is the fencing token while this contender holds the lease, else None.
    """

    def __init__(
        self,
        kv: KeyValue,
        key: str,
        holder: str,
        timings: LeaseTimings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kv = kv
        self.key = key
        self.holder = holder
        self.timings = timings or LeaseTimings()
        self._clock = clock
        #: The fencing token (revision of the acquiring write) while held.
        self.token: int | None = None
        #: The revision of this holder's latest write.
        self._revision = 0
        self._renewed_at = 0.0
        #: A standby's view: the revision last seen and when it was first seen.
        self._seen: tuple[int, float] | None = None

    @property
    def held(self) -> bool:
        """Whether this contender holds the lease (as far as it knows)."""
        return self.token is not None

    def _value(self) -> bytes:
        value = {"holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(), "written_at": time.time()}
        return json.dumps(value).encode()

    async def try_acquire(self) -> bool:
        """One standby step: take the lease if it is free or expired; True if now held."""
        if self.token is not None:
            return True
        try:
            try:
                entry = await self.kv.get(self.key)
            except KeyNotFoundError:  # absent, or deleted by a holder that stopped (KeyDeletedError)
                revision = await self.kv.create(self.key, self._value())
                return self._acquired(revision)
            now, seen = self._clock(), entry.revision or 0
            if _holder_died_here(entry.value):
                pass  # no need to wait out its TTL (a restart after a crash, `mlwarden up`)
            elif self._seen is None or self._seen[0] != seen:
                self._seen = (seen, now)
                return False
            elif now - self._seen[1] < self.timings.ttl_s:
                return False
            revision = await self.kv.update(self.key, self._value(), last=seen)
            return self._acquired(revision)
        except KeyWrongLastSequenceError:
            return False  # another contender was faster
        except (NatsError, TimeoutError) as exc:
            log.debug("lease %s: acquire attempt failed: %r", self.key, exc)
            return False

    def _acquired(self, revision: int) -> bool:
        self.token = self._revision = revision
        self._renewed_at = self._clock()
        self._seen = None
        log.info("lease %s: acquired by %s (token %d)", self.key, self.holder, revision)
        return True

    async def renew(self) -> bool:
        """One holder step: extend the lease; False once it is lost."""
        if self.token is None:
            return False
        try:
            self._revision = await self.kv.update(self.key, self._value(), last=self._revision)
            self._renewed_at = self._clock()
            return True
        except KeyWrongLastSequenceError:
            if await self._still_mine():
                return True
            return self._lost("taken by another contender")
        except (NatsError, TimeoutError) as exc:
            silent = self._clock() - self._renewed_at
            if silent >= self.timings.ttl_s - self.timings.renew_s:
                return self._lost(f"not renewed for {silent:.1f} s ({exc!r})")
            log.warning("lease %s: renewal failed (%.1f s without): %r", self.key, silent, exc)
            return True

    async def _still_mine(self) -> bool:
        # A renewal whose answer was lost (a timeout while the stream changed leader) may still
        # have been written: then the key holds this holder's name at a newer revision.
        try:
            entry = await self.kv.get(self.key)
        except (NatsError, TimeoutError):
            return False
        if entry.value is None or entry.revision is None:
            return False
        try:
            owner = json.loads(entry.value).get("holder")
        except ValueError:
            return False
        if owner != self.holder:
            return False
        self._revision = entry.revision
        self._renewed_at = self._clock()
        return True

    def _lost(self, why: str) -> bool:
        log.warning("lease %s: lost by %s (token %s): %s", self.key, self.holder, self.token, why)
        self.token = None
        self._seen = None
        return False

    async def release(self) -> None:
        """Give the lease up (a clean stop): a standby may take it at its next look."""
        if self.token is None:
            return
        self.token = None
        try:
            await self.kv.delete(self.key, last=self._revision)
        except (NatsError, TimeoutError) as exc:  # it expires on its own
            log.debug("lease %s: release failed: %r", self.key, exc)

    async def run(
        self,
        on_acquired: Callable[[int], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        """Contend forever: call `on_acquired(token)` on taking the lease, `on_lost()` on losing it.

        If `on_acquired` raises, the lease is released and the contender waits one period.
        """
        while True:
            if self.token is None:
                if await self.try_acquire():
                    assert self.token is not None
                    try:
                        await on_acquired(self.token)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - stand by again; another may lead
                        log.error("lease %s: could not start as leader: %r", self.key, exc)
                        await on_lost()
                        await self.release()
            elif not await self.renew():
                await on_lost()
            await asyncio.sleep(self.timings.renew_s)
