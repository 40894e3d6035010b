"""Server configuration from the environment (built in main(), passed in; never global)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medseg import addresses
from medseg.codec import DEFAULT_MAX_VOLUME_BYTES


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off")


def _env(name: str, default, cast=str):
    value = os.environ.get(name)
    return default if value in (None, "") else cast(value)


@dataclass
class ServerConfig:
    """Settings of one server. Env: MEDSEG_DATA_ROOT, MEDSEG_MAX_VOLUME_BYTES,
    MEDSEG_<SERVICE>_PORT, MEDSEG_<SERVICE>_HOST, MEDSEG_<SERVICE>_WORKERS (concurrent
    computations), MEDSEG_<SERVICE>_QUEUE (queued + running before RESOURCE_EXHAUSTED),
    MEDSEG_DRAIN_SECONDS (wait after NOT_SERVING so the gateway notices),
    MEDSEG_GRACE_SECONDS (time in-flight calls get on shutdown); service-specific:
    MEDSEG_<SERVICE>_METRICS_PORT (Prometheus /metrics; default the gRPC port + 1000),
    MEDSEG_MODEL_REGISTRY (nnunet's model registry file), MEDSEG_MODEL_WATCH_SECONDS (how often
    nnunet checks the registry file for changes and reloads; 0: only on SIGHUP), MEDSEG_NNUNET_MAX_VOXELS (largest
    phase nnunet accepts), MEDSEG_NNUNET_LEAN (0: nnU-Net's own pre/post-processing), MEDSEG_MESH_THREADS (VTK threads
    of the smoothing service). Unset service-specific values are None: the science default
    applies."""

    service: str
    data_root: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES
    compute_workers: int = 1
    queue_capacity: int = 8
    drain_seconds: float = 0.0
    grace_seconds: float = 10.0
    model_registry: Path | None = None
    model_watch_seconds: float = 2.0
    metrics_port: int = 0  # Prometheus /metrics (0: none; from_env: medseg.addresses.metrics_port)
    nnunet_max_voxels: int | None = None
    nnunet_lean: bool | None = None
    mesh_threads: int | None = None

    @property
    def rpc_threads(self) -> int:
        # More gRPC threads than computations, so health checks and receiving never starve.
        return self.queue_capacity + self.compute_workers + 8

    @classmethod
    def from_env(cls, service: str, default_workers: int = 1, **overrides) -> "ServerConfig":
        up = service.upper()
        values = dict(
            service=service,
            data_root=Path(_env("MEDSEG_DATA_ROOT", "data")).resolve(),
            host=_env(f"MEDSEG_{up}_HOST", "127.0.0.1"),
            port=addresses.port(service),
            max_volume_bytes=_env("MEDSEG_MAX_VOLUME_BYTES", DEFAULT_MAX_VOLUME_BYTES, int),
            compute_workers=_env(f"MEDSEG_{up}_WORKERS", default_workers, int),
            queue_capacity=_env(f"MEDSEG_{up}_QUEUE", 8, int),
            drain_seconds=_env("MEDSEG_DRAIN_SECONDS", 6.0, float),
            grace_seconds=_env("MEDSEG_GRACE_SECONDS", 10.0, float),
            model_registry=_env("MEDSEG_MODEL_REGISTRY", None, Path),
            model_watch_seconds=_env("MEDSEG_MODEL_WATCH_SECONDS", 2.0, float),
            metrics_port=addresses.metrics_port(service),
            nnunet_max_voxels=_env("MEDSEG_NNUNET_MAX_VOXELS", None, int),
            nnunet_lean=_env("MEDSEG_NNUNET_LEAN", None, _flag),
            mesh_threads=_env("MEDSEG_MESH_THREADS", None, int),
        )
        values.update(overrides)
        return cls(**values)
