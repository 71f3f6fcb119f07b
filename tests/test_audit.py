"""The decision audit log: an HMAC chain anchored by a head file detects every edit, removal, reordering and
truncation; concurrent writers never interleave; a crash between append and head update is recoverable."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.audit import (
    GENESIS,
    AuditLog,
    AuditLogDamaged,
    BadAuditRecord,
    NotFound,
    canonical,
    new_decision_id,
)

SECRET = "test-secret"


def decision(gate: str = "standard", **extra: object) -> dict:
    return {"kind": "decision", "decision_id": new_decision_id(), "decision": {"gate": gate}, **extra}


def log_with(directory: Path, n: int) -> AuditLog:
    log = AuditLog(directory, SECRET)
    for i in range(n):
        log.append(decision(note=f"change {i}", llm={"prompt": "p", "response": "r ü"}))
    return log


def lines_of(log: AuditLog) -> list[bytes]:
    return log.log_path.read_bytes().splitlines(keepends=True)


def test_appended_records_verify_and_the_head_is_the_newest_hmac(tmp_path):
    log = AuditLog(tmp_path, SECRET)
    first = log.append(decision())
    second = log.append(decision("block"))
    report = log.verify(second.hmac)
    assert report.ok and report.records == 2 and report.head == second.hmac and report.problem is None
    assert log.head.count == 2 and log.head.hmac == second.hmac
    assert (first.seq, second.seq) == (0, 1)
    records = list(log.records())
    assert records[0]["prev"] == GENESIS and records[1]["prev"] == first.hmac
    assert {"seq", "prev", "hmac", "recorded_at"} <= set(records[1])


def test_an_absent_log_verifies_with_no_records(tmp_path):
    report = AuditLog(tmp_path / "audit", SECRET).verify()
    assert report.ok and report.records == 0 and report.head == GENESIS


def test_find_returns_the_decision_and_its_overrides_in_order(tmp_path):
    log = AuditLog(tmp_path, SECRET)
    d = decision()
    log.append(d)
    log.append(decision())
    for gate in ("block", "standard"):
        log.append({"kind": "override", "decision_id": d["decision_id"], "to_gate": gate, "who": "alice"})
    history = log.find(d["decision_id"])
    assert history.decision["decision_id"] == d["decision_id"]
    assert [o["to_gate"] for o in history.overrides] == ["block", "standard"]
    with pytest.raises(NotFound, match="01ARZ3NDEKTSV4RRFFQ69G5FAV"):
        log.find("01ARZ3NDEKTSV4RRFFQ69G5FAV")


def test_a_record_without_kind_or_with_reserved_fields_is_refused(tmp_path):
    log = AuditLog(tmp_path, SECRET)
    with pytest.raises(BadAuditRecord, match="kind"):
        log.append({"decision_id": new_decision_id()})
    with pytest.raises(BadAuditRecord, match="hmac"):
        log.append({**decision(), "hmac": "x"})
    with pytest.raises(BadAuditRecord, match="plain JSON"):
        log.append(decision(score=float("nan")))


def test_an_edited_field_is_detected_at_its_line(tmp_path):
    log = log_with(tmp_path, 3)
    text = log.log_path.read_bytes()
    lines = lines_of(log)
    rid = json.loads(lines[1])["decision_id"]
    lines[1] = lines[1].replace(b'"gate":"standard"', b'"gate":"fast_track"')
    log.log_path.write_bytes(b"".join(lines))
    assert log.log_path.read_bytes() != text
    report = log.verify()
    assert (
        not report.ok and report.line == 2 and report.problem == f"hmac mismatch at line 2 (record id {rid})"
    )


def test_a_removed_middle_record_is_detected(tmp_path):
    log = log_with(tmp_path, 4)
    lines = lines_of(log)
    del lines[1]
    log.log_path.write_bytes(b"".join(lines))
    report = log.verify()
    assert not report.ok and report.line == 2 and report.records == 1


def test_reordered_records_are_detected(tmp_path):
    log = log_with(tmp_path, 4)
    lines = lines_of(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.log_path.write_bytes(b"".join(lines))
    report = log.verify()
    assert not report.ok and report.line == 2
    assert (report.problem or "").startswith("out of order at line 2")


def test_a_truncated_tail_is_detected_by_the_head_file(tmp_path):
    log = log_with(tmp_path, 4)
    log.log_path.write_bytes(b"".join(lines_of(log)[:2]))
    report = log.verify()
    assert not report.ok and report.problem == "log truncated: head says 4 records, log has 2"
    with pytest.raises(AuditLogDamaged, match="does not match the head"):
        log.append(decision())


def test_a_truncation_with_a_rewritten_head_file_is_caught_by_the_head_kept_elsewhere(tmp_path):
    log = log_with(tmp_path, 3)
    kept = log.head.hmac
    lines = lines_of(log)
    log.log_path.write_bytes(b"".join(lines[:2]))
    log.head_path.write_text(json.dumps({"count": 2, "hmac": json.loads(lines[1])["hmac"]}))
    assert log.verify().ok  # the head file alone cannot tell
    report = log.verify(kept)
    assert not report.ok and report.problem is not None and report.problem.startswith("head mismatch")


def test_a_kept_head_still_verifies_after_the_log_grew(tmp_path):
    log = log_with(tmp_path, 2)
    kept = log.head.hmac
    log.append(decision())
    report = log.verify(kept)
    assert report.ok and report.records == 3


def test_an_edit_that_keeps_the_json_meaning_is_detected(tmp_path):
    log = AuditLog(tmp_path, SECRET)
    log.append(decision(probability=1e-05))
    assert b"1e-05" in log.log_path.read_bytes()
    log.log_path.write_bytes(log.log_path.read_bytes().replace(b"1e-05", b"1E-05"))
    report = log.verify()
    assert not report.ok and "not in canonical form" in (report.problem or "")


def test_a_record_spliced_in_from_another_log_with_the_same_secret_is_detected(tmp_path):
    log = log_with(tmp_path / "a", 3)
    other = log_with(tmp_path / "b", 3)
    lines = lines_of(log)
    lines[1] = lines_of(other)[1]
    log.log_path.write_bytes(b"".join(lines))
    report = log.verify()
    assert not report.ok and report.line == 2 and (report.problem or "").startswith("chain broken at line 2")


def test_an_attacker_who_recomputes_plain_hashes_without_the_secret_is_detected(tmp_path):
    log = log_with(tmp_path, 3)
    records = [json.loads(line) for line in lines_of(log)]
    records[1]["decision"]["gate"] = "fast_track"
    prev, rewritten = GENESIS, []
    for record in records:
        body = {k: v for k, v in record.items() if k != "hmac"} | {"prev": prev}
        prev = hashlib.sha256(canonical(body)).hexdigest()
        rewritten.append(canonical({**body, "hmac": prev}) + b"\n")
    log.log_path.write_bytes(b"".join(rewritten))
    log.head_path.write_text(json.dumps({"count": 3, "hmac": prev}))
    report = log.verify()
    assert not report.ok and report.line == 1 and report.problem is not None
    assert report.problem.startswith("hmac mismatch at line 1")


def test_a_wrong_secret_fails_verification_without_crashing(tmp_path):
    log_with(tmp_path, 2)
    report = AuditLog(tmp_path, "not-the-secret").verify()
    assert not report.ok and report.line == 1 and "secret" in (report.problem or "")
    with pytest.raises(AuditLogDamaged, match="HMAC"):
        AuditLog(tmp_path, "not-the-secret").append(decision())


def _append_many(directory: str, worker: int, n: int) -> None:
    log = AuditLog(Path(directory), SECRET)
    for i in range(n):
        log.append(decision(worker=worker, i=i, padding="x" * 2000))


def test_concurrent_appends_from_several_processes_form_one_valid_chain(tmp_path):
    ctx = multiprocessing.get_context("fork")  # separate processes, without re-importing the project
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 25)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0, 0]
    log = AuditLog(tmp_path, SECRET)
    report = log.verify()
    assert report.ok and report.records == 100 and log.head.count == 100
    records = list(log.records())
    assert [r["seq"] for r in records] == list(range(100))
    assert sorted((r["worker"], r["i"]) for r in records) == [(w, i) for w in range(4) for i in range(25)]


def _append_without_head_update(log: AuditLog) -> str:
    """A crash after the append's fsync and before the head update: the line is written, the head is not."""
    head_before = log.head_path.read_bytes()
    entry = log.append(decision("block"))
    log.head_path.write_bytes(head_before)
    return entry.hmac


def test_a_crash_between_append_and_head_update_is_accepted_and_rolled_forward(tmp_path):
    log = log_with(tmp_path, 2)
    unanchored = _append_without_head_update(log)
    report = log.verify()
    assert report.ok and report.records == 3 and report.head == unanchored and report.note
    entry = log.append(decision())
    assert entry.seq == 3 and log.head.count == 4
    assert log.verify().ok and log.verify().note is None


def test_an_unanchored_record_that_does_not_chain_is_reported(tmp_path):
    log = log_with(tmp_path, 2)
    head_before = log.head_path.read_bytes()
    _append_without_head_update(log)
    _append_without_head_update(log)  # rolls the first forward, so write the older head back
    log.head_path.write_bytes(head_before)
    report = log.verify()
    assert not report.ok and report.problem == "head mismatch: head says 2 records, log has 4 valid records"
    with pytest.raises(AuditLogDamaged):
        log.append(decision())


def test_a_torn_last_line_is_reported_refused_and_only_repair_moves_it_aside(tmp_path):
    log = log_with(tmp_path, 2)
    fragment = canonical(decision())[:40]
    with open(log.log_path, "ab") as fh:
        fh.write(fragment)
    report = log.verify()
    assert not report.ok and report.line == 3 and "torn last line 3" in (report.problem or "")
    with pytest.raises(AuditLogDamaged, match="torn"):
        log.append(decision())
    repaired = log.repair()
    assert repaired.removed_bytes == 40 and repaired.line == 3 and repaired.saved_to is not None
    assert repaired.saved_to.read_bytes() == fragment
    assert log.verify().ok and log.verify().records == 2
    assert log.append(decision()).seq == 2
    assert log.repair().removed_bytes == 0


def test_repair_refuses_a_log_that_was_tampered_with(tmp_path):
    log = log_with(tmp_path, 2)
    lines = lines_of(log)
    lines[0] = lines[0].replace(b"change 0", b"change 9")
    log.log_path.write_bytes(b"".join(lines) + b'{"kind":')
    with pytest.raises(AuditLogDamaged, match="not repaired"):
        log.repair()
    assert log.log_path.read_bytes().endswith(b'{"kind":')


@pytest.fixture(scope="module")
def three_records(tmp_path_factory) -> tuple[AuditLog, bytes]:
    log = log_with(tmp_path_factory.mktemp("audit"), 3)
    return log, log.log_path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_edit_of_any_record_never_verifies(three_records, data):
    log, original = three_records
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]), label="byte")
    edited = bytearray(original)
    edited[position] = byte
    log.log_path.write_bytes(bytes(edited))
    try:
        assert not log.verify().ok
    finally:
        log.log_path.write_bytes(original)
