import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from medseg.nnunet.v1 import nnunet_pb2 as _nnunet_pb2
from medseg.postprocess.v1 import postprocess_pb2 as _postprocess_pb2
from medseg.smoothing.v1 import smoothing_pb2 as _smoothing_pb2
from medseg.volume.v1 import volume_pb2 as _volume_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CaseState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CASE_STATE_UNSPECIFIED: _ClassVar[CaseState]
    CASE_STATE_QUEUED: _ClassVar[CaseState]
    CASE_STATE_RUNNING: _ClassVar[CaseState]
    CASE_STATE_SUCCEEDED: _ClassVar[CaseState]
    CASE_STATE_FAILED: _ClassVar[CaseState]
    CASE_STATE_CANCELLED: _ClassVar[CaseState]

class StepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATE_UNSPECIFIED: _ClassVar[StepState]
    STEP_STATE_PENDING: _ClassVar[StepState]
    STEP_STATE_RUNNING: _ClassVar[StepState]
    STEP_STATE_DONE: _ClassVar[StepState]
    STEP_STATE_SKIPPED: _ClassVar[StepState]
    STEP_STATE_FAILED: _ClassVar[StepState]
    STEP_STATE_CANCELLED: _ClassVar[StepState]

class CaseEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CASE_EVENT_KIND_UNSPECIFIED: _ClassVar[CaseEventKind]
    CASE_EVENT_KIND_STATE: _ClassVar[CaseEventKind]
    CASE_EVENT_KIND_STEP: _ClassVar[CaseEventKind]
    CASE_EVENT_KIND_PROGRESS: _ClassVar[CaseEventKind]
CASE_STATE_UNSPECIFIED: CaseState
CASE_STATE_QUEUED: CaseState
CASE_STATE_RUNNING: CaseState
CASE_STATE_SUCCEEDED: CaseState
CASE_STATE_FAILED: CaseState
CASE_STATE_CANCELLED: CaseState
STEP_STATE_UNSPECIFIED: StepState
STEP_STATE_PENDING: StepState
STEP_STATE_RUNNING: StepState
STEP_STATE_DONE: StepState
STEP_STATE_SKIPPED: StepState
STEP_STATE_FAILED: StepState
STEP_STATE_CANCELLED: StepState
CASE_EVENT_KIND_UNSPECIFIED: CaseEventKind
CASE_EVENT_KIND_STATE: CaseEventKind
CASE_EVENT_KIND_STEP: CaseEventKind
CASE_EVENT_KIND_PROGRESS: CaseEventKind

class UploadVolumeHeader(_message.Message):
    __slots__ = ("total_bytes", "sha256")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    sha256: str
    def __init__(self, total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadVolumeRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadVolumeHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadVolumeHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadVolumeResponse(_message.Message):
    __slots__ = ("sha256", "bytes", "already_present", "size", "spacing")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    bytes: int
    already_present: bool
    size: _containers.RepeatedScalarFieldContainer[int]
    spacing: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., already_present: _Optional[bool] = ..., size: _Optional[_Iterable[int]] = ..., spacing: _Optional[_Iterable[float]] = ...) -> None: ...

class PhaseInput(_message.Message):
    __slots__ = ("path", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class CaseOptions(_message.Message):
    __slots__ = ("tasks", "vessel_limits", "ureter_limits", "disable_fat", "mesh_formats", "speck_max_mm3")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    VESSEL_LIMITS_FIELD_NUMBER: _ClassVar[int]
    URETER_LIMITS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_FAT_FIELD_NUMBER: _ClassVar[int]
    MESH_FORMATS_FIELD_NUMBER: _ClassVar[int]
    SPECK_MAX_MM3_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[_nnunet_pb2.Task]
    vessel_limits: _postprocess_pb2.RepairLimits
    ureter_limits: _postprocess_pb2.RepairLimits
    disable_fat: bool
    mesh_formats: _containers.RepeatedScalarFieldContainer[_smoothing_pb2.MeshFormat]
    speck_max_mm3: float
    def __init__(self, tasks: _Optional[_Iterable[_Union[_nnunet_pb2.Task, str]]] = ..., vessel_limits: _Optional[_Union[_postprocess_pb2.RepairLimits, _Mapping]] = ..., ureter_limits: _Optional[_Union[_postprocess_pb2.RepairLimits, _Mapping]] = ..., disable_fat: _Optional[bool] = ..., mesh_formats: _Optional[_Iterable[_Union[_smoothing_pb2.MeshFormat, str]]] = ..., speck_max_mm3: _Optional[float] = ...) -> None: ...

class SubmitCaseRequest(_message.Message):
    __slots__ = ("arterial", "portal", "delayed", "options", "request_id", "display_name")
    ARTERIAL_FIELD_NUMBER: _ClassVar[int]
    PORTAL_FIELD_NUMBER: _ClassVar[int]
    DELAYED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    arterial: PhaseInput
    portal: PhaseInput
    delayed: PhaseInput
    options: CaseOptions
    request_id: str
    display_name: str
    def __init__(self, arterial: _Optional[_Union[PhaseInput, _Mapping]] = ..., portal: _Optional[_Union[PhaseInput, _Mapping]] = ..., delayed: _Optional[_Union[PhaseInput, _Mapping]] = ..., options: _Optional[_Union[CaseOptions, _Mapping]] = ..., request_id: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class SubmitCaseResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: CaseJob
    def __init__(self, job: _Optional[_Union[CaseJob, _Mapping]] = ...) -> None: ...

class GetCaseRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetCaseResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: CaseJob
    def __init__(self, job: _Optional[_Union[CaseJob, _Mapping]] = ...) -> None: ...

class ListCasesRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: CaseState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[CaseState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCasesResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[CaseJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[CaseJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelCaseRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelCaseResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: CaseJob
    def __init__(self, job: _Optional[_Union[CaseJob, _Mapping]] = ...) -> None: ...

class DeleteCaseRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteCaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchCaseRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchCaseResponse(_message.Message):
    __slots__ = ("snapshot", "event")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    snapshot: CaseJob
    event: CaseEvent
    def __init__(self, snapshot: _Optional[_Union[CaseJob, _Mapping]] = ..., event: _Optional[_Union[CaseEvent, _Mapping]] = ...) -> None: ...

class FetchCaseOutputRequest(_message.Message):
    __slots__ = ("job_id", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class FetchCaseOutputResponse(_message.Message):
    __slots__ = ("chunk", "sha256")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    chunk: _volume_pb2.FileChunk
    sha256: str
    def __init__(self, chunk: _Optional[_Union[_volume_pb2.FileChunk, _Mapping]] = ..., sha256: _Optional[str] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("name", "path", "sha256", "bytes", "step")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    sha256: str
    bytes: int
    step: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ..., step: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "state", "seconds", "note", "fraction", "message", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: StepState
    seconds: float
    note: str
    fraction: float
    message: str
    outputs: _containers.RepeatedCompositeFieldContainer[OutputFile]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[StepState, str]] = ..., seconds: _Optional[float] = ..., note: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ...) -> None: ...

class SkippedTask(_message.Message):
    __slots__ = ("task", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: _nnunet_pb2.Task
    reason: str
    def __init__(self, task: _Optional[_Union[_nnunet_pb2.Task, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class CaseInput(_message.Message):
    __slots__ = ("phase", "path", "sha256", "source")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    path: str
    sha256: str
    source: str
    def __init__(self, phase: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class CaseError(_message.Message):
    __slots__ = ("step", "code", "message")
    STEP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    step: str
    code: str
    message: str
    def __init__(self, step: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CaseProgress(_message.Message):
    __slots__ = ("job_id", "state", "fraction", "step", "message", "steps")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: CaseState
    fraction: float
    step: str
    message: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[CaseState, str]] = ..., fraction: _Optional[float] = ..., step: _Optional[str] = ..., message: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ...) -> None: ...

class CaseResult(_message.Message):
    __slots__ = ("job_id", "output_dir", "outputs", "skipped", "structures")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    STRUCTURES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    output_dir: str
    outputs: _containers.RepeatedCompositeFieldContainer[OutputFile]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedTask]
    structures: _containers.RepeatedCompositeFieldContainer[_postprocess_pb2.LabelMeasurement]
    def __init__(self, job_id: _Optional[str] = ..., output_dir: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., skipped: _Optional[_Iterable[_Union[SkippedTask, _Mapping]]] = ..., structures: _Optional[_Iterable[_Union[_postprocess_pb2.LabelMeasurement, _Mapping]]] = ...) -> None: ...

class CaseJob(_message.Message):
    __slots__ = ("job_id", "state", "display_name", "request_id", "inputs", "options", "progress", "result", "error", "create_time", "start_time", "end_time", "cancel_requested", "attempts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: CaseState
    display_name: str
    request_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[CaseInput]
    options: CaseOptions
    progress: CaseProgress
    result: CaseResult
    error: CaseError
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    cancel_requested: bool
    attempts: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[CaseState, str]] = ..., display_name: _Optional[str] = ..., request_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[CaseInput, _Mapping]]] = ..., options: _Optional[_Union[CaseOptions, _Mapping]] = ..., progress: _Optional[_Union[CaseProgress, _Mapping]] = ..., result: _Optional[_Union[CaseResult, _Mapping]] = ..., error: _Optional[_Union[CaseError, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., attempts: _Optional[int] = ...) -> None: ...

class CaseEvent(_message.Message):
    __slots__ = ("sequence", "time", "kind", "state", "step", "step_state", "fraction", "message")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_STATE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    kind: CaseEventKind
    state: CaseState
    step: str
    step_state: StepState
    fraction: float
    message: str
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[_Union[CaseEventKind, str]] = ..., state: _Optional[_Union[CaseState, str]] = ..., step: _Optional[str] = ..., step_state: _Optional[_Union[StepState, str]] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...
