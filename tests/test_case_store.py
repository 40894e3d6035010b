"""The case job store on SQLite: idempotent submit, claim and lease, takeover, cancel, paging."""
from __future__ import annotations

import threading
import time

import pytest

from case_svc import store as st
from medseg.serving.errors import FieldError

STEPS = ["segment", "combine", "report"]


@pytest.fixture
def store(tmp_path):
    s = st.Store(f"sqlite:///{tmp_path / 'cases' / 'cases.db'}")
    yield s
    s.close()


def test_store_uses_wal_under_the_given_path(store, tmp_path):
    assert (tmp_path / "cases" / "cases.db").exists()
    with store.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_same_request_id_makes_one_job(store):
    first, created = store.create_job({"inputs": {}}, STEPS, request_id="r-1")
    again, created_again = store.create_job({"inputs": {}}, STEPS, request_id="r-1")
    other, _ = store.create_job({"inputs": {}}, STEPS)
    assert created and not created_again and again == first and other != first
    assert [s["state"] for s in store.job(first)["steps"]] == ["PENDING"] * 3


def test_one_claimer_wins_and_an_expired_lease_is_taken_over(store):
    job_id, _ = store.create_job({}, STEPS)
    claimed = []
    threads = [threading.Thread(target=lambda r=r: claimed.append(store.claim(r, 0.5))) for r in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(filter(None, claimed)) == [job_id]
    owner = store.job(job_id)["owner"]
    assert store.claim("z", 30) is None  # lease still held
    assert store.renew(job_id, owner, 0.2) == (True, False)
    time.sleep(0.3)
    assert store.claim("z", 30) == job_id  # expired: taken over
    assert store.renew(job_id, owner, 30) == (False, False)  # the old owner learns it lost it
    assert store.job(job_id)["attempts"] == 2
    assert not store.finish(job_id, owner, st.SUCCEEDED)
    assert store.finish(job_id, "z", st.SUCCEEDED)


def test_a_restarted_replica_takes_its_own_jobs_back_at_once(store):
    job_id, _ = store.create_job({}, STEPS)
    assert store.claim("host:50054", 30) == job_id
    assert store.claim("host:50054", 30) is None
    assert store.release_own("host:50054") == 1
    assert store.claim("host:50054", 30) == job_id


def test_cancel(store):
    queued, _ = store.create_job({}, STEPS)
    assert store.request_cancel(queued) == st.CANCELLED
    running, _ = store.create_job({}, STEPS)
    store.claim("a", 30)
    assert store.request_cancel(running) == st.RUNNING
    assert store.renew(running, "a", 30) == (True, True)
    store.finish(running, "a", st.SUCCEEDED)
    with pytest.raises(st.WrongState):
        store.request_cancel(running)
    with pytest.raises(st.UnknownJob):
        store.request_cancel("nope")


def test_list_pages_newest_first_and_filters(store):
    ids = [store.create_job({}, STEPS)[0] for _ in range(5)]
    store.request_cancel(ids[0])
    seen, token = [], ""
    while True:
        page, token = store.list_jobs(page_size=2, page_token=token)
        seen += [j["id"] for j in page]
        if not token:
            break
    assert seen == ids[::-1]
    assert [j["id"] for j in store.list_jobs(st.CANCELLED)[0]] == [ids[0]]
    with pytest.raises(FieldError):
        store.list_jobs(page_token="garbage!")


def test_events_and_outputs(store):
    job_id, _ = store.create_job({}, STEPS)
    store.claim("a", 30)
    mark = store.last_event_id(job_id)
    store.set_step(job_id, "segment", "RUNNING")
    store.record_outputs(job_id, "segment", [{"name": "masks/t.nii.gz", "path": f"cases/{job_id}/masks/t.nii.gz",
                                              "sha256": "0" * 64, "bytes": 3}])
    store.set_step(job_id, "segment", "DONE", seconds=1.5, note="ok", data={"x": 1})
    events = store.events_after(job_id, mark)
    assert [(e["kind"], e["step"], e["step_state"]) for e in events] == [("STEP", "segment", "RUNNING"),
                                                                          ("STEP", "segment", "DONE")]
    job = store.job(job_id)
    assert job["steps"][0]["data"] == {"x": 1} and job["outputs"][0]["name"] == "masks/t.nii.gz"
    with pytest.raises(st.WrongState):
        store.delete_job(job_id)
    store.finish(job_id, "a", st.FAILED, error={"step": "combine", "code": "INTERNAL", "message": "x"})
    store.delete_job(job_id)
    with pytest.raises(st.UnknownJob):
        store.job(job_id)
