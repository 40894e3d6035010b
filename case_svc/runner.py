"""The replica's job runner: claims jobs from the store (at most `workers` at once), keeps
their leases alive, turns a cancel request into a cancelled downstream call, and records how
each job ended. Plain threads; nothing here knows the servicer."""
from __future__ import annotations

import logging
import threading
import time

from case_svc import pipeline, store as st
from case_svc.config import CaseConfig
from medseg.client import Client

log = logging.getLogger("medseg.case")


class Runner:
    def __init__(self, config: CaseConfig, store: st.Store, client_factory=None):
        self.config = config
        self.store = store
        self.client_factory = client_factory or (lambda: Client(config.gateway))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, pipeline.JobContext] = {}
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> "Runner":
        released = self.store.release_own(self.config.replica_id)
        if released:
            log.info("resuming %d job(s) this replica was running before it stopped", released)
        self._thread = threading.Thread(target=self._dispatch, name="case-dispatch", daemon=True)
        self._thread.start()
        return self

    def wake(self) -> None:
        """A job was submitted: look for work now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming; interrupt running jobs and hand them back (lease released), so
        another replica, or this one after a restart, resumes them."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            contexts = list(self._active.values())
        for ctx in contexts:
            self._interrupt(ctx)
        deadline = time.monotonic() + timeout
        while self._active and time.monotonic() < deadline:
            time.sleep(0.1)

    @property
    def active(self) -> list[str]:
        with self._lock:
            return list(self._active)

    # --- claiming --------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            claimed = None
            if len(self._active) < self.config.workers:
                try:
                    claimed = self.store.claim(self.config.replica_id, self.config.lease_seconds)
                except Exception:  # noqa: BLE001 - a store hiccup must not end the dispatcher
                    log.exception("claiming a job failed; retrying")
            if claimed:
                self._start_job(claimed)
                continue
            self._wake.wait(0.5)
            self._wake.clear()

    def _start_job(self, job_id: str) -> None:
        job = self.store.job(job_id)
        ctx = pipeline.JobContext(job_id=job_id, root=self.config.data_root, spec=job["spec"],
                                  client=self.client_factory(), store=self.store,
                                  stop=threading.Event(), step_retries=self.config.step_retries,
                                  speck_max_mm3=self.config.speck_max_mm3)
        with self._lock:
            self._active[job_id] = ctx
        log.info("job %s: attempt %d", job_id, job["attempts"])
        threading.Thread(target=self._run, args=(ctx,), name=f"case-{job_id[:8]}", daemon=True).start()
        threading.Thread(target=self._heartbeat, args=(ctx,), name=f"lease-{job_id[:8]}", daemon=True).start()

    # --- one job ---------------------------------------------------------------------

    @staticmethod
    def _interrupt(ctx: pipeline.JobContext) -> None:
        ctx.stop.set()
        # Closing the job's channel cancels its in-flight downstream calls at once.
        ctx.client.close()

    def _heartbeat(self, ctx: pipeline.JobContext) -> None:
        # Renew the lease well within its length; poll for cancel at least every second.
        interval = max(0.2, min(1.0, self.config.lease_seconds / 3))
        while not ctx.stop.wait(interval):
            try:
                ours, cancel = self.store.renew(ctx.job_id, self.config.replica_id, self.config.lease_seconds)
            except Exception:  # noqa: BLE001 - try again next beat; the lease has slack
                log.exception("job %s: lease renewal failed", ctx.job_id)
                continue
            if cancel:
                log.info("job %s: cancel requested", ctx.job_id)
                ctx.cancelled = True
                self._interrupt(ctx)
            elif not ours:
                log.warning("job %s: lease lost to another replica; stopping here", ctx.job_id)
                self._interrupt(ctx)

    def _run(self, ctx: pipeline.JobContext) -> None:
        replica = self.config.replica_id
        try:
            pipeline.run_job(ctx)
            result = {"removed_specks": ctx.results.get("cleanup", {}).get("removed_specks", []),
                      "labels": ctx.results.get("measure", {}).get("labels", [])}
            self.store.finish(ctx.job_id, replica, st.SUCCEEDED, result=result, message="all steps done")
            log.info("job %s: succeeded", ctx.job_id)
        except pipeline.JobStopped:
            if ctx.cancelled:
                self.store.finish(ctx.job_id, replica, st.CANCELLED, message="cancelled by a client")
                log.info("job %s: cancelled", ctx.job_id)
            else:
                # Shutdown or lost lease: leave it RUNNING with an expired lease for the next claimer.
                self.store.release_own_job(ctx.job_id, replica)
                log.info("job %s: handed back", ctx.job_id)
        except pipeline.StepFailed as exc:
            state = st.CANCELLED if ctx.cancelled else st.FAILED
            self.store.finish(ctx.job_id, replica, state,
                              error={"step": exc.step, "code": exc.code, "message": exc.message},
                              message=str(exc))
            log.info("job %s: %s at %s (%s)", ctx.job_id, state, exc.step, exc.code)
        except Exception as exc:  # noqa: BLE001 - never leave a job RUNNING because of a bug
            log.exception("job %s: runner error", ctx.job_id)
            self.store.finish(ctx.job_id, replica, st.FAILED,
                              error={"step": "", "code": "INTERNAL", "message": exc.__class__.__name__},
                              message="internal error")
        finally:
            ctx.stop.set()
            ctx.client.close()
            with self._lock:
                self._active.pop(ctx.job_id, None)
            self._wake.set()
