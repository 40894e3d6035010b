"""Every setting of the case service, read from the environment in one place (main()).

    MEDSEG_DATA_ROOT            data root (uploads, job folders, the SQLite store)
    MEDSEG_CASE_PORT / _HOST    where the case service listens (default 50054, 127.0.0.1)
    MEDSEG_CASE_WORKERS         jobs run at once by this replica (default 1); the rest queue
    MEDSEG_CASE_QUEUE           extra gRPC threads for watchers/uploads (ServerConfig)
    MEDSEG_MAX_VOLUME_BYTES     largest upload accepted (file bytes and decompressed voxels)
    MEDSEG_GATEWAY              gateway the jobs call the other services through
    MEDSEG_CASE_DB_URL          SQLAlchemy URL of the job store; default SQLite (WAL) at
                                <data root>/cases/cases.db; postgresql+psycopg://... lets
                                several replicas share one queue
    MEDSEG_CASE_LEASE_SECONDS   a running job's lease (default 30): renewed by heartbeat; a
                                job whose lease expired is taken over by another replica
    MEDSEG_CASE_REPLICA_ID      this replica's name in the store (default host:port, stable
                                across restarts, so a restarted replica takes its own jobs
                                back at once instead of waiting for the lease)
    MEDSEG_CASE_STEP_RETRIES    retries of a downstream call answered UNAVAILABLE (default 2)
    MEDSEG_CASE_SPECK_MM3       default speck size limit of the cleanup step (default 50)
    MEDSEG_DRAIN_SECONDS, MEDSEG_GRACE_SECONDS   shutdown, as for every server
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from medseg import addresses
from medseg.serving.config import ServerConfig


def _env(name: str, default, cast=str):
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)


@dataclass
class CaseConfig:
    server: ServerConfig
    db_url: str
    gateway: str
    lease_seconds: float = 30.0
    replica_id: str = "local"
    step_retries: int = 2
    speck_max_mm3: float = 50.0

    @property
    def data_root(self) -> Path:
        return self.server.data_root

    @property
    def workers(self) -> int:
        return self.server.compute_workers

    @classmethod
    def from_env(cls, **overrides) -> "CaseConfig":
        server = overrides.pop("server", None) or ServerConfig.from_env("case", default_workers=1)
        default_db = f"sqlite:///{server.data_root / 'cases' / 'cases.db'}"
        values = dict(
            server=server,
            db_url=_env("MEDSEG_CASE_DB_URL", default_db),
            gateway=addresses.gateway_address(),
            lease_seconds=_env("MEDSEG_CASE_LEASE_SECONDS", 30.0, float),
            replica_id=_env("MEDSEG_CASE_REPLICA_ID", f"{socket.gethostname()}:{server.port}"),
            step_retries=_env("MEDSEG_CASE_STEP_RETRIES", 2, int),
            speck_max_mm3=_env("MEDSEG_CASE_SPECK_MM3", 50.0, float),
        )
        values.update(overrides)
        return cls(**values)
