"""The tamper-evident decision audit log: one JSON line per decision or override, each carrying an
HMAC-SHA256 over itself and the previous record's HMAC (a hash chain, as in Schneier and Kelsey's secure
audit logs), with the newest HMAC and the record count anchored outside the log in a head file.

Layout of `<data root>/audit/`:
- `decisions.jsonl`: one record per line, canonical JSON (sorted keys, no spaces, UTF-8). Each record has
  `seq` (0-based position), `prev` (the previous record's HMAC; GENESIS for the first), `recorded_at` and
  `hmac` = HMAC-SHA256(secret, canonical JSON of the record without `hmac`).
- `decisions.head`: `{"count": N, "hmac": "<newest HMAC>"}`, replaced atomically after each append.
- `decisions.jsonl.lock`: the writers' lock; one record is appended at a time, across processes.

What is detected: an edited, removed, reordered or inserted record (its HMAC or its chain breaks; the stored
line must also be byte-for-byte canonical, so even an edit that keeps the JSON's meaning is caught); a
truncated log (the head file counts more records); someone who rewrites the records and their hashes
without the secret. Someone who truncates the log *and* rewrites the head file to an earlier head is caught
only against a head kept elsewhere: `verify(expected_head)` with a head printed by an earlier decision.

Crashes: a record is appended with one write + fsync, then the head is replaced. A crash between the two
leaves exactly one valid, chained record beyond the head; the next append rolls the head forward and
`verify` accepts it (read-only, it says so in `note`). A crash mid-write leaves a torn last line (no newline):
`verify` reports it and `append` refuses to write after it (the new line would be glued to the fragment);
only `repair()` removes it, and it first copies the fragment to a side file, so nothing is ever destroyed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock
import ulid

from features.errors import AwoError, BadConfig
from features.tables import atomic_write_text, fsync_dir

LOG_FILE = "decisions.jsonl"
HEAD_FILE = "decisions.head"
LOCK_FILE = "decisions.jsonl.lock"
GENESIS = "0" * 64  # the `prev` of the first record and the head of an empty log
RESERVED = ("seq", "prev", "hmac", "recorded_at")  # added by `append`, never given by the caller
LOCK_TIMEOUT_S = 60.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class NotFound(AwoError):
    """No decision with this id is recorded in the audit log."""


class BadAuditRecord(AwoError):
    """A record given to `append` cannot be recorded as it is."""


class AuditLogBusy(AwoError):
    """The writers' lock of the audit log could not be taken in time."""


class AuditLogDamaged(AwoError):
    """The audit log does not match its head or has a torn last line: nothing more is written to it."""


def new_decision_id() -> str:
    """A fresh decision id: a ULID (26 characters, sortable by creation time)."""
    return str(ulid.ULID())


@dataclass(frozen=True)
class AuditEntry:
    """What `append` recorded: keep `hmac` (the log's new head) to check the log later."""

    decision_id: str
    seq: int
    hmac: str


@dataclass(frozen=True)
class AuditHead:
    """The newest record's HMAC and the number of records, as the head file says."""

    hmac: str
    count: int


@dataclass(frozen=True)
class VerifyReport:
    """The result of `AuditLog.verify`.

    records: records that verified (all of them when ok); head: the HMAC of the newest one (GENESIS when
    none); line: the 1-based line of the first problem, if it is on a line; problem: why the log fails;
    note: something worth saying about a log that verifies (a head rolled forward, growth since a kept head).
    """

    ok: bool
    records: int
    head: str
    problem: str | None = None
    line: int | None = None
    note: str | None = None


@dataclass(frozen=True)
class DecisionHistory:
    """A recorded decision and the overrides of it, oldest first."""

    decision: dict[str, Any]
    overrides: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RepairReport:
    """What `repair` removed from the end of the log (nothing when `removed_bytes` is 0)."""

    removed_bytes: int
    line: int | None = None  # the line number the torn fragment had
    saved_to: Path | None = None  # the side file holding the removed bytes
    preview: str = ""  # the start of the removed bytes, decoded leniently

    def describe(self) -> str:
        if not self.removed_bytes:
            return "nothing to repair: the log ends with a complete line"
        return (
            f"removed a torn line {self.line} ({self.removed_bytes} bytes, starting {self.preview!r}); "
            f"saved to {self.saved_to}"
        )


def canonical(value: Any) -> bytes:
    """The canonical JSON of `value`: sorted keys, no spaces, UTF-8; NaN and infinities are refused."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


class _Bad(Exception):
    """A line that fails verification (internal: becomes a VerifyReport)."""

    def __init__(self, problem: str, line: int | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


class AuditLog:
    """The audit log of one directory, checked with one secret. Nothing is read or written until used."""

    def __init__(self, directory: Path, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not key:
            raise BadConfig("the audit secret is empty: set audit_secret in the settings")
        self.directory = Path(directory)
        self._key = key

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE

    @property
    def head_path(self) -> Path:
        return self.directory / HEAD_FILE

    @property
    def head(self) -> AuditHead:
        """The head as the head file says (GENESIS and 0 when there is none yet)."""
        return self._read_head()

    # -- writing ---------------------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> AuditEntry:
        """Append one record (a dict of JSON values with `kind` and `decision_id`), adding `seq`, `prev`,
        `recorded_at` and `hmac`; returns the new head. Raises AuditLogDamaged when the log's tail does not
        match its head (anything beyond one unanchored record, which is rolled forward)."""
        body = _checked_body(record)
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock():
            head = self._anchored_head()
            body.update(seq=head.count, prev=head.hmac, recorded_at=datetime.now(UTC).isoformat())
            mac = self._mac(body)
            line = canonical({**body, "hmac": mac}) + b"\n"
            created = not self.log_path.exists()
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = 0
                while written < len(line):  # one write in practice; a short write is finished, not split
                    written += os.write(fd, line[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.directory)
            self._write_head(AuditHead(mac, head.count + 1))
        return AuditEntry(body["decision_id"], head.count, mac)

    def repair(self) -> RepairReport:
        """Remove a torn last line (a write cut off by a crash), after copying it to a side file
        `decisions.torn-<time>`. Refuses (AuditLogDamaged) when the complete lines do not verify: a log that
        was tampered with is for a person to look at, not for a repair to tidy up."""
        if not self.log_path.exists():
            return RepairReport(0)
        with self._lock():
            data_end, lines = self._complete_size()
            size = self.log_path.stat().st_size
            if data_end == size:
                return RepairReport(0)
            report = self._verify_unlocked(None, allow_torn=True)
            if not report.ok:
                raise AuditLogDamaged(
                    f"{self.log_path}: not repaired, the log fails verification: {report.problem}"
                )
            with open(self.log_path, "rb") as fh:
                fh.seek(data_end)
                torn = fh.read()
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            saved = self.directory / f"decisions.torn-{stamp}"
            with open(saved, "wb") as out:
                out.write(torn)
                out.flush()
                os.fsync(out.fileno())
            with open(self.log_path, "r+b") as fh:
                fh.truncate(data_end)
                fh.flush()
                os.fsync(fh.fileno())
            fsync_dir(self.directory)
        return RepairReport(len(torn), lines + 1, saved, torn[:80].decode("utf-8", "replace"))

    # -- reading ---------------------------------------------------------------------------------------

    def records(self) -> Iterator[dict[str, Any]]:
        """Every complete record, oldest first (not checked: that is `verify`'s job). A torn last line is
        not a record and is skipped; a line that is not a JSON object raises AuditLogDamaged."""
        if not self.log_path.exists():
            return
        with open(self.log_path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    return
                try:
                    record = json.loads(raw)
                except ValueError:
                    raise AuditLogDamaged(f"{self.log_path}: line {number} is not valid JSON") from None
                if not isinstance(record, dict):
                    raise AuditLogDamaged(f"{self.log_path}: line {number} is not a JSON object")
                yield record

    def find(self, decision_id: str) -> DecisionHistory:
        """The decision recorded under `decision_id` and its overrides in order. Each returned record's own
        HMAC is checked (AuditLogDamaged if edited); the chain as a whole is `verify`'s job."""
        decision: dict[str, Any] | None = None
        overrides: list[dict[str, Any]] = []
        for record in self.records():
            if record.get("decision_id") != decision_id:
                continue
            if record.get("kind") == "decision" and decision is None:
                decision = record
            elif record.get("kind") == "override":
                overrides.append(record)
        if decision is None:
            raise NotFound(f"no decision {decision_id!r} in the audit log {self.log_path}")
        for record in (decision, *overrides):
            if not self._mac_matches(record):
                raise AuditLogDamaged(
                    f"{self.log_path}: record {record.get('seq')} of decision {decision_id} fails its HMAC "
                    "(edited, or a different secret): run `awo audit verify`"
                )
        return DecisionHistory(decision, overrides)

    def verify(self, expected_head: str | None = None) -> VerifyReport:
        """Check every record's HMAC and chain, the head file, and (when given) that `expected_head`, a head
        kept outside the log, is still in it. Never raises on a bad log: the report says what is wrong."""
        if not self.directory.exists():
            return self._verify_unlocked(expected_head, allow_torn=False)
        try:
            with self._lock():
                return self._verify_unlocked(expected_head, allow_torn=False)
        except OSError:  # a read-only copy of the log: check it without the writers' lock
            return self._verify_unlocked(expected_head, allow_torn=False)

    # -- internals -------------------------------------------------------------------------------------

    def _verify_unlocked(self, expected_head: str | None, *, allow_torn: bool) -> VerifyReport:
        wanted: str | None = None
        if expected_head is not None:
            wanted = expected_head.strip().lower()
            if not _HEX64.match(wanted):
                return VerifyReport(
                    False, 0, GENESIS, f"the expected head {expected_head!r} is not a 64-hex HMAC"
                )
        prev, count, seen_wanted = GENESIS, 0, wanted == GENESIS
        try:
            head = self._read_head()
            for number, raw in self._lines():
                if not raw.endswith(b"\n"):
                    if allow_torn:
                        break
                    raise _Bad(
                        f"torn last line {number} ({len(raw)} bytes without a newline: a write cut off by a "
                        "crash?); `repair` moves it aside",
                        number,
                    )
                record = self._checked_line(raw[:-1], number, prev, count)
                prev, count = record["hmac"], count + 1
                seen_wanted = seen_wanted or prev == wanted
        except AuditLogDamaged as exc:
            return VerifyReport(False, count, prev, str(exc))
        except _Bad as bad:
            return VerifyReport(False, count, prev, bad.problem, bad.line)
        note = None
        if count < head.count:
            return VerifyReport(
                False, count, prev, f"log truncated: head says {head.count} records, log has {count}"
            )
        if count == head.count + 1 and (head.count == 0 or self._hmac_at(head.count - 1) == head.hmac):
            note = (
                f"record {count} is not in the head file yet (a crash between the append and the head "
                "update?); the next append rolls the head forward"
            )
        elif count != head.count:
            return VerifyReport(
                False,
                count,
                prev,
                f"head mismatch: head says {head.count} records, log has {count} valid records",
            )
        elif not hmac.compare_digest(prev, head.hmac):
            return VerifyReport(
                False,
                count,
                prev,
                f"head mismatch: head file says {head.hmac}, the log's newest record has {prev}",
            )
        if wanted is not None and not seen_wanted:
            return VerifyReport(
                False,
                count,
                prev,
                f"head mismatch: the head you kept ({wanted[:16]}…) is not in the log: records were removed "
                "or rewritten after it",
            )
        return VerifyReport(True, count, prev, note=note)

    def _checked_line(self, raw: bytes, number: int, prev: str, seq: int) -> dict[str, Any]:
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Bad(f"line {number} is not UTF-8", number) from None
        except ValueError:
            raise _Bad(f"malformed JSON at line {number}", number) from None
        if not isinstance(record, dict):
            raise _Bad(f"line {number} is not a JSON object", number)
        rid = record.get("decision_id")
        where = f"line {number} (record id {rid})"
        if not isinstance(record.get("hmac"), str):
            raise _Bad(f"no hmac at {where}", number)
        try:
            canonical_line = canonical(record)
        except ValueError:
            canonical_line = b""
        if canonical_line != raw:
            raise _Bad(f"{where} is not in canonical form (edited by hand?)", number)
        if not self._mac_matches(record):
            hint = (
                ": the record was changed, or the secret is not the one it was written with"
                if seq == 0
                else ""
            )
            raise _Bad(f"hmac mismatch at {where}{hint}", number)
        if record.get("seq") != seq:
            raise _Bad(f"out of order at {where}: seq {record.get('seq')}, expected {seq}", number)
        if record.get("prev") != prev:
            raise _Bad(f"chain broken at {where}: its prev is not the HMAC of the record before it", number)
        return record

    def _anchored_head(self) -> AuditHead:
        """The head to append after (under the lock): the head file's, rolled forward over one valid
        unanchored record. Raises AuditLogDamaged when the log's tail does not match the head."""
        head = self._read_head()
        size = self.log_path.stat().st_size if self.log_path.exists() else 0
        if size == 0:
            if head.count:
                raise AuditLogDamaged(
                    f"{self.log_path}: log truncated: head says {head.count} records, log is empty"
                )
            return head
        last = self._last_line()
        if not last.endswith(b"\n"):
            raise AuditLogDamaged(
                f"{self.log_path}: torn last line (a write cut off by a crash?): not appending after it; "
                "check with `awo audit verify`, then `repair` moves it aside"
            )
        try:
            record = json.loads(last)
        except ValueError:
            raise AuditLogDamaged(
                f"{self.log_path}: the last line is not valid JSON: run `awo audit verify`"
            ) from None
        if not isinstance(record, dict) or not self._mac_matches(record):
            raise AuditLogDamaged(
                f"{self.log_path}: the last record fails its HMAC (edited, or another secret): "
                "run `awo audit verify`"
            )
        if record.get("seq") == head.count - 1 and record.get("hmac") == head.hmac:
            return head
        if record.get("seq") == head.count and record.get("prev") == head.hmac:
            rolled = AuditHead(record["hmac"], head.count + 1)
            self._write_head(rolled)
            return rolled
        raise AuditLogDamaged(
            f"{self.log_path}: the last record (seq {record.get('seq')}) does not match the head "
            f"({head.count} records): run `awo audit verify`"
        )

    def _read_head(self) -> AuditHead:
        try:
            text = self.head_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return AuditHead(GENESIS, 0)
        try:
            data = json.loads(text)
            head = AuditHead(str(data["hmac"]), int(data["count"]))
        except (ValueError, KeyError, TypeError):
            raise AuditLogDamaged(f"{self.head_path}: the head file is unreadable") from None
        if not _HEX64.match(head.hmac) or head.count < 0:
            raise AuditLogDamaged(f"{self.head_path}: the head file is unreadable")
        return head

    def _write_head(self, head: AuditHead) -> None:
        atomic_write_text(self.head_path, json.dumps({"count": head.count, "hmac": head.hmac}) + "\n")

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        # Binary iteration splits on b"\n" only: JSON escapes newlines in strings, but text-mode splitting
        # would also break lines at U+2028 and friends, which canonical UTF-8 JSON writes raw.
        if not self.log_path.exists():
            return
        with open(self.log_path, "rb") as fh:
            yield from enumerate(fh, start=1)

    def _hmac_at(self, seq: int) -> str | None:
        for number, raw in self._lines():
            if number == seq + 1:
                value = json.loads(raw).get("hmac")
                return value if isinstance(value, str) else None
        return None

    def _complete_size(self) -> tuple[int, int]:
        """The size of the log up to and including its last newline, and the number of complete lines."""
        end = lines = 0
        for _, raw in self._lines():
            if raw.endswith(b"\n"):
                end += len(raw)
                lines += 1
        return end, lines

    def _last_line(self) -> bytes:
        """The last line of a non-empty log (with its newline, if it has one). Reads backwards in blocks,
        so appending stays cheap however long the log grows."""
        with open(self.log_path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            tail = b""
            pos = size
            while pos > 0:
                step = min(65536, pos)
                pos -= step
                fh.seek(pos)
                tail = fh.read(step) + tail
                start = tail.rfind(b"\n", 0, len(tail) - 1)
                if start >= 0:
                    return tail[start + 1 :]
            return tail

    def _mac(self, body: dict[str, Any]) -> str:
        return hmac.new(self._key, canonical(body), hashlib.sha256).hexdigest()

    def _mac_matches(self, record: dict[str, Any]) -> bool:
        claimed = record.get("hmac")
        if not isinstance(claimed, str):
            return False
        body = {k: v for k, v in record.items() if k != "hmac"}
        try:
            return hmac.compare_digest(self._mac(body), claimed)
        except ValueError:  # NaN in an edited record, or a non-ASCII claimed HMAC
            return False
        except TypeError:
            return False

    @contextmanager
    def _lock(self) -> Iterator[None]:
        # filelock polls; its default 50 ms interval would dominate an append (~15 ms) under contention.
        lock = filelock.FileLock(str(self.directory / LOCK_FILE), timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire(poll_interval=0.002)
        except filelock.Timeout:
            raise AuditLogBusy(
                f"{self.directory / LOCK_FILE}: another writer held the audit log for {LOCK_TIMEOUT_S:.0f}s"
            ) from None
        try:
            yield
        finally:
            lock.release()


def _checked_body(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of `record` as it will be stored (through canonical JSON), or BadAuditRecord saying why not."""
    if not isinstance(record, dict):
        raise BadAuditRecord(f"an audit record is a dict, not {type(record).__name__}")
    for key in ("kind", "decision_id"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise BadAuditRecord(f"an audit record needs a non-empty string {key!r}")
    taken = [k for k in RESERVED if k in record]
    if taken:
        raise BadAuditRecord(f"audit record fields {taken} are set by the log, not by the caller")
    try:
        body: dict[str, Any] = json.loads(canonical(record))
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise BadAuditRecord(
            f"audit record of decision {record['decision_id']} is not plain JSON: {exc}"
        ) from None
    return body
