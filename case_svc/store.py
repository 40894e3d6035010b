"""The durable job store (SQLAlchemy 2 Core): jobs, steps, outputs, uploads, events.

SQLite in WAL mode under the data root by default; a postgresql+psycopg:// URL lets several
case-service replicas share one queue. Replicas claim jobs with SELECT ... FOR UPDATE SKIP
LOCKED (Postgres; SQLite serialises writers anyway) followed by a compare-and-set UPDATE, so
a job is run by one replica at a time. A running job holds a lease that its replica renews;
a job whose lease expired (its replica died) is claimed again like a queued one.

Plain Python in, plain Python out (dicts, strings): nothing here knows gRPC.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import (Boolean, Column, Float, Integer, MetaData, String, Table, Text, and_,
                        create_engine, delete, event, func, insert, or_, select, update)
from sqlalchemy.exc import IntegrityError

from medseg.serving.errors import FieldError, Unsupported

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)
STEP_STATES = ("PENDING", "RUNNING", "DONE", "SKIPPED", "FAILED", "CANCELLED")

metadata = MetaData()

jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("request_id", String(200), unique=True, nullable=True),
    Column("display_name", String(200), nullable=False, default=""),
    Column("state", String(16), nullable=False, index=True),
    Column("spec", Text, nullable=False),              # JSON: inputs, options, tasks, skipped
    Column("created", Float, nullable=False, index=True),
    Column("started", Float),
    Column("ended", Float),
    Column("owner", String(200)),                      # replica running it
    Column("lease_until", Float),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("progress", Text, nullable=False, default="{}"),  # JSON: fraction, step, message
    Column("error", Text),                             # JSON: step, code, message
    Column("result", Text),                            # JSON: plain facts for the result
)

steps = Table(
    "steps", metadata,
    Column("job_id", String(32), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("seconds", Float, nullable=False, default=0.0),
    Column("note", Text, nullable=False, default=""),
    Column("fraction", Float, nullable=False, default=0.0),
    Column("message", Text, nullable=False, default=""),
    Column("data", Text, nullable=False, default="{}"),  # JSON: the step's plain result
)

outputs = Table(
    "outputs", metadata,
    Column("job_id", String(32), primary_key=True),
    Column("name", String(300), primary_key=True),     # relative to the job folder
    Column("step", String(64), nullable=False),
    Column("path", String(1000), nullable=False),      # relative to the data root
    Column("sha256", String(64), nullable=False),
    Column("bytes", Integer, nullable=False),
)

uploads = Table(
    "uploads", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("path", String(1000), nullable=False),      # relative to the data root
    Column("bytes", Integer, nullable=False),
    Column("info", Text, nullable=False, default="{}"),  # JSON: size, spacing
    Column("created", Float, nullable=False),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), nullable=False, index=True),
    Column("time", Float, nullable=False),
    Column("kind", String(16), nullable=False),        # STATE | STEP
    Column("state", String(16), nullable=False),
    Column("step", String(64), nullable=False, default=""),
    Column("step_state", String(16), nullable=False, default=""),
    Column("message", Text, nullable=False, default=""),
)


class UnknownJob(FileNotFoundError):
    """No job with that id (NOT_FOUND)."""


class WrongState(Unsupported):
    """The job's state does not allow the request (FAILED_PRECONDITION)."""


def _loads(text: str | None, default=None):
    return json.loads(text) if text else default


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers (watchers) never block the writer; busy_timeout: writers wait, not fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            path = url.split(":///", 1)[1] if ":///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
        # SQLite allows one writer: serialise this process's writes (others wait in busy_timeout).
        self._write_lock = threading.Lock() if self.is_sqlite else None
        with self.engine.begin() as c:
            if not self.is_sqlite:
                # Replicas starting together would race to create the tables: one at a time.
                c.exec_driver_sql("SELECT pg_advisory_xact_lock(7420154)")
            metadata.create_all(c)

    def _begin(self):
        return _Tx(self)

    def close(self) -> None:
        self.engine.dispose()

    # --- uploads ---------------------------------------------------------------------

    def add_upload(self, sha256: str, path: str, nbytes: int, info: dict) -> bool:
        """Record an upload; False when it was already recorded."""
        with self._begin() as c:
            if c.execute(select(uploads.c.sha256).where(uploads.c.sha256 == sha256)).first():
                return False
            c.execute(insert(uploads).values(sha256=sha256, path=path, bytes=nbytes,
                                             info=json.dumps(info), created=time.time()))
            return True

    def upload(self, sha256: str) -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(select(uploads).where(uploads.c.sha256 == sha256)).mappings().first()
        return None if row is None else {**row, "info": _loads(row["info"], {})}

    # --- jobs ------------------------------------------------------------------------

    def create_job(self, spec: dict, step_names: list[str], request_id: str = "",
                   display_name: str = "") -> tuple[str, bool]:
        """A new QUEUED job with PENDING steps; (job id, created). With a request_id seen
        before, the earlier job's id and False."""
        if request_id:
            existing = self._job_by_request(request_id)
            if existing:
                return existing, False
        job_id = uuid.uuid4().hex[:16]
        now = time.time()
        try:
            with self._begin() as c:
                c.execute(insert(jobs).values(
                    id=job_id, request_id=request_id or None, display_name=display_name,
                    state=QUEUED, spec=json.dumps(spec), created=now, cancel_requested=False,
                    attempts=0, progress=json.dumps({"fraction": 0.0, "step": "", "message": "queued"})))
                c.execute(insert(steps), [dict(job_id=job_id, name=n, position=i, state="PENDING",
                                               seconds=0.0, note="", fraction=0.0, message="", data="{}")
                                          for i, n in enumerate(step_names)])
                self._event(c, job_id, "STATE", QUEUED, message="submitted")
        except IntegrityError:
            # Two concurrent submits with one request_id: the other one won.
            existing = self._job_by_request(request_id)
            if existing:
                return existing, False
            raise
        return job_id, True

    def _job_by_request(self, request_id: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(jobs.c.id).where(jobs.c.request_id == request_id)).scalar()

    def job(self, job_id: str) -> dict:
        """The job with its steps and outputs, as plain data. UnknownJob if absent."""
        with self.engine.connect() as c:
            row = c.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
            if row is None:
                raise UnknownJob(f"job_id: no job '{job_id}'")
            step_rows = c.execute(select(steps).where(steps.c.job_id == job_id)
                                  .order_by(steps.c.position)).mappings().all()
            output_rows = c.execute(select(outputs).where(outputs.c.job_id == job_id)
                                    .order_by(outputs.c.name)).mappings().all()
        return self._job_dict(row, step_rows, output_rows)

    @staticmethod
    def _job_dict(row, step_rows, output_rows) -> dict:
        job = dict(row)
        for key, default in (("spec", {}), ("progress", {}), ("error", None), ("result", None)):
            job[key] = _loads(job[key], default)
        job["steps"] = [{**s, "data": _loads(s["data"], {})} for s in step_rows]
        job["outputs"] = [dict(o) for o in output_rows]
        return job

    def list_jobs(self, state: str = "", page_size: int = 50, page_token: str = "") -> tuple[list[dict], str]:
        """Jobs newest first; (jobs, next page token or "")."""
        if not 1 <= page_size <= 1000:
            raise FieldError("page_size", f"must be 1..1000, got {page_size}")
        query = select(jobs.c.id, jobs.c.created)
        if state:
            query = query.where(jobs.c.state == state)
        if page_token:
            try:
                created_text, last_id = base64.urlsafe_b64decode(page_token.encode()).decode().split("|", 1)
                created = float(created_text)
            except (ValueError, UnicodeDecodeError):
                raise FieldError("page_token", "not a token this service issued") from None
            query = query.where(or_(jobs.c.created < created,
                                    and_(jobs.c.created == created, jobs.c.id < last_id)))
        query = query.order_by(jobs.c.created.desc(), jobs.c.id.desc()).limit(page_size + 1)
        with self.engine.connect() as c:
            rows = c.execute(query).all()
        token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            token = base64.urlsafe_b64encode(f"{rows[-1].created!r}|{rows[-1].id}".encode()).decode()
        return [self.job(r.id) for r in rows], token

    def delete_job(self, job_id: str) -> None:
        job = self.job(job_id)
        if job["state"] not in FINAL_STATES:
            raise WrongState(f"job '{job_id}' is {job['state']}: cancel it before deleting it")
        with self._begin() as c:
            for table in (outputs, steps, events):
                c.execute(delete(table).where(table.c.job_id == job_id))
            c.execute(delete(jobs).where(jobs.c.id == job_id))

    def request_cancel(self, job_id: str) -> str:
        """Cancel: a queued job ends at once, a running one is flagged for its runner.
        Returns the state after the request."""
        job = self.job(job_id)
        if job["state"] in (SUCCEEDED, FAILED):
            raise WrongState(f"job '{job_id}' already {job['state']}; nothing to cancel")
        if job["state"] == CANCELLED:
            return CANCELLED
        now = time.time()
        with self._begin() as c:
            done = c.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.state == QUEUED))
                             .values(state=CANCELLED, ended=now, cancel_requested=True)).rowcount
            if done:
                self._event(c, job_id, "STATE", CANCELLED, message="cancelled while queued")
                return CANCELLED
            c.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True))
        return self.job(job_id)["state"]

    # --- the queue -------------------------------------------------------------------

    def release_own(self, replica: str) -> int:
        """At start-up: jobs this replica was running when it died are claimable at once."""
        with self._begin() as c:
            return c.execute(update(jobs).where(and_(jobs.c.state == RUNNING, jobs.c.owner == replica))
                             .values(lease_until=0.0)).rowcount

    def release_own_job(self, job_id: str, replica: str) -> None:
        """Hand a running job back (shutdown): claimable at once by any replica."""
        with self._begin() as c:
            c.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.owner == replica,
                                              jobs.c.state == RUNNING)).values(lease_until=0.0))

    def claim(self, replica: str, lease_seconds: float) -> str | None:
        """Take the oldest queued job, or a running one whose lease expired; None if none."""
        now = time.time()
        claimable = or_(jobs.c.state == QUEUED,
                        and_(jobs.c.state == RUNNING, jobs.c.lease_until < now))
        with self._begin() as c:
            job_id = c.execute(select(jobs.c.id).where(claimable).order_by(jobs.c.created)
                               .limit(1).with_for_update(skip_locked=True)).scalar()
            if job_id is None:
                return None
            # Compare-and-set: only one claimer can move it (also where FOR UPDATE is a no-op).
            taken = c.execute(update(jobs).where(and_(jobs.c.id == job_id, claimable)).values(
                state=RUNNING, owner=replica, lease_until=now + lease_seconds,
                attempts=jobs.c.attempts + 1,
                started=func.coalesce(jobs.c.started, now))).rowcount
            if not taken:
                return None
            self._event(c, job_id, "STATE", RUNNING, message=f"started by {replica}")
        return job_id

    def renew(self, job_id: str, replica: str, lease_seconds: float) -> tuple[bool, bool]:
        """Heartbeat: (still ours, cancel requested)."""
        with self._begin() as c:
            ours = c.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.owner == replica,
                                                     jobs.c.state == RUNNING))
                             .values(lease_until=time.time() + lease_seconds)).rowcount
            cancel = c.execute(select(jobs.c.cancel_requested).where(jobs.c.id == job_id)).scalar()
        return bool(ours), bool(cancel)

    def finish(self, job_id: str, replica: str, state: str, error: dict | None = None,
               result: dict | None = None, message: str = "") -> bool:
        with self._begin() as c:
            done = c.execute(update(jobs).where(and_(jobs.c.id == job_id, jobs.c.owner == replica,
                                                     jobs.c.state == RUNNING)).values(
                state=state, ended=time.time(), lease_until=None,
                error=json.dumps(error) if error else None,
                result=json.dumps(result) if result is not None else None)).rowcount
            if done:
                self._event(c, job_id, "STATE", state, message=message or state.lower())
        return bool(done)

    def set_result(self, job_id: str, result: dict) -> None:
        with self._begin() as c:
            c.execute(update(jobs).where(jobs.c.id == job_id).values(result=json.dumps(result)))

    # --- steps and progress ----------------------------------------------------------

    def set_step(self, job_id: str, name: str, state: str, *, seconds: float | None = None,
                 note: str | None = None, data: dict | None = None, job_state: str = RUNNING) -> None:
        values = {"state": state}
        if seconds is not None:
            values["seconds"] = seconds
        if note is not None:
            values["note"] = note
        if data is not None:
            values["data"] = json.dumps(data)
        if state in ("DONE", "SKIPPED"):
            values["fraction"] = 1.0
        with self._begin() as c:
            c.execute(update(steps).where(and_(steps.c.job_id == job_id, steps.c.name == name)).values(**values))
            self._event(c, job_id, "STEP", job_state, step=name, step_state=state, message=note or "")

    def set_progress(self, job_id: str, step: str, step_fraction: float, fraction: float,
                     message: str) -> None:
        with self._begin() as c:
            c.execute(update(steps).where(and_(steps.c.job_id == job_id, steps.c.name == step))
                      .values(fraction=step_fraction, message=message))
            c.execute(update(jobs).where(jobs.c.id == job_id).values(progress=json.dumps(
                {"fraction": fraction, "step": step, "message": message})))

    def record_outputs(self, job_id: str, step: str, files: list[dict]) -> None:
        """Replace the step's output records: [{name, path, sha256, bytes}]."""
        with self._begin() as c:
            c.execute(delete(outputs).where(and_(outputs.c.job_id == job_id, outputs.c.step == step)))
            if files:
                c.execute(delete(outputs).where(and_(outputs.c.job_id == job_id,
                                                     outputs.c.name.in_([f["name"] for f in files]))))
                c.execute(insert(outputs), [dict(job_id=job_id, step=step, **f) for f in files])

    # --- events ----------------------------------------------------------------------

    def _event(self, c, job_id: str, kind: str, state: str, step: str = "", step_state: str = "",
               message: str = "") -> None:
        c.execute(insert(events).values(job_id=job_id, time=time.time(), kind=kind, state=state,
                                        step=step, step_state=step_state, message=message[:2000]))

    def events_after(self, job_id: str, after: int) -> list[dict]:
        with self.engine.connect() as c:
            rows = c.execute(select(events).where(and_(events.c.job_id == job_id, events.c.id > after))
                             .order_by(events.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def last_event_id(self, job_id: str) -> int:
        with self.engine.connect() as c:
            return c.execute(select(func.max(events.c.id)).where(events.c.job_id == job_id)).scalar() or 0


class _Tx:
    """engine.begin() under the process's SQLite write lock."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        if self.store._write_lock:
            self.store._write_lock.acquire()
        self._ctx = self.store.engine.begin()
        try:
            return self._ctx.__enter__()
        except BaseException:
            if self.store._write_lock:
                self.store._write_lock.release()
            raise

    def __exit__(self, *exc):
        try:
            return self._ctx.__exit__(*exc)
        finally:
            if self.store._write_lock:
                self.store._write_lock.release()
