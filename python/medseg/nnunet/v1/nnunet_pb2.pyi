from medseg.volume.v1 import volume_pb2 as _volume_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_TOTAL: _ClassVar[Task]
    TASK_VESSELS: _ClassVar[Task]
    TASK_URETER: _ClassVar[Task]
    TASK_TUMOR: _ClassVar[Task]

class InferenceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INFERENCE_MODE_UNSPECIFIED: _ClassVar[InferenceMode]
    INFERENCE_MODE_ACCURATE: _ClassVar[InferenceMode]
    INFERENCE_MODE_FAST: _ClassVar[InferenceMode]
TASK_UNSPECIFIED: Task
TASK_TOTAL: Task
TASK_VESSELS: Task
TASK_URETER: Task
TASK_TUMOR: Task
INFERENCE_MODE_UNSPECIFIED: InferenceMode
INFERENCE_MODE_ACCURATE: InferenceMode
INFERENCE_MODE_FAST: InferenceMode

class SegmentationResult(_message.Message):
    __slots__ = ("outputs", "device", "info", "models")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[_volume_pb2.OutputVolume]
    device: str
    info: _volume_pb2.ResultInfo
    models: _containers.RepeatedCompositeFieldContainer[ModelProvenance]
    def __init__(self, outputs: _Optional[_Iterable[_Union[_volume_pb2.OutputVolume, _Mapping]]] = ..., device: _Optional[str] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelProvenance, _Mapping]]] = ...) -> None: ...

class ModelProvenance(_message.Message):
    __slots__ = ("task", "model_versions", "digest", "nnunet_version")
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NNUNET_VERSION_FIELD_NUMBER: _ClassVar[int]
    task: str
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    nnunet_version: str
    def __init__(self, task: _Optional[str] = ..., model_versions: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., nnunet_version: _Optional[str] = ...) -> None: ...

class SegmentTotalParams(_message.Message):
    __slots__ = ("ct_path", "output", "mode", "dicom")
    CT_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    ct_path: str
    output: _volume_pb2.OutputOptions
    mode: InferenceMode
    dicom: _volume_pb2.DicomSelection
    def __init__(self, ct_path: _Optional[str] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ..., mode: _Optional[_Union[InferenceMode, str]] = ..., dicom: _Optional[_Union[_volume_pb2.DicomSelection, _Mapping]] = ...) -> None: ...

class SegmentTotalRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SegmentTotalParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SegmentTotalParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentTotalResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SegmentationResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class SegmentVesselsParams(_message.Message):
    __slots__ = ("arterial_path", "portal_path", "disable_kidney_crop", "output", "mode", "dicom")
    ARTERIAL_PATH_FIELD_NUMBER: _ClassVar[int]
    PORTAL_PATH_FIELD_NUMBER: _ClassVar[int]
    DISABLE_KIDNEY_CROP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    arterial_path: str
    portal_path: str
    disable_kidney_crop: bool
    output: _volume_pb2.OutputOptions
    mode: InferenceMode
    dicom: _volume_pb2.DicomSelection
    def __init__(self, arterial_path: _Optional[str] = ..., portal_path: _Optional[str] = ..., disable_kidney_crop: _Optional[bool] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ..., mode: _Optional[_Union[InferenceMode, str]] = ..., dicom: _Optional[_Union[_volume_pb2.DicomSelection, _Mapping]] = ...) -> None: ...

class SegmentVesselsRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SegmentVesselsParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SegmentVesselsParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentVesselsResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SegmentationResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class SegmentUreterParams(_message.Message):
    __slots__ = ("delayed_path", "disable_kidney_crop", "output", "mode", "dicom")
    DELAYED_PATH_FIELD_NUMBER: _ClassVar[int]
    DISABLE_KIDNEY_CROP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    delayed_path: str
    disable_kidney_crop: bool
    output: _volume_pb2.OutputOptions
    mode: InferenceMode
    dicom: _volume_pb2.DicomSelection
    def __init__(self, delayed_path: _Optional[str] = ..., disable_kidney_crop: _Optional[bool] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ..., mode: _Optional[_Union[InferenceMode, str]] = ..., dicom: _Optional[_Union[_volume_pb2.DicomSelection, _Mapping]] = ...) -> None: ...

class SegmentUreterRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SegmentUreterParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SegmentUreterParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentUreterResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SegmentationResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class SegmentTumorParams(_message.Message):
    __slots__ = ("ct_path", "disable_kidney_crop", "output", "mode", "dicom")
    CT_PATH_FIELD_NUMBER: _ClassVar[int]
    DISABLE_KIDNEY_CROP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    ct_path: str
    disable_kidney_crop: bool
    output: _volume_pb2.OutputOptions
    mode: InferenceMode
    dicom: _volume_pb2.DicomSelection
    def __init__(self, ct_path: _Optional[str] = ..., disable_kidney_crop: _Optional[bool] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ..., mode: _Optional[_Union[InferenceMode, str]] = ..., dicom: _Optional[_Union[_volume_pb2.DicomSelection, _Mapping]] = ...) -> None: ...

class SegmentTumorRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SegmentTumorParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SegmentTumorParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentTumorResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SegmentationResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class SegmentCaseParams(_message.Message):
    __slots__ = ("tasks", "arterial_path", "portal_path", "delayed_path", "disable_kidney_crop", "output_dir", "inline", "mode", "dicom")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    ARTERIAL_PATH_FIELD_NUMBER: _ClassVar[int]
    PORTAL_PATH_FIELD_NUMBER: _ClassVar[int]
    DELAYED_PATH_FIELD_NUMBER: _ClassVar[int]
    DISABLE_KIDNEY_CROP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedScalarFieldContainer[Task]
    arterial_path: str
    portal_path: str
    delayed_path: str
    disable_kidney_crop: bool
    output_dir: str
    inline: bool
    mode: InferenceMode
    dicom: _volume_pb2.DicomSelection
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, str]]] = ..., arterial_path: _Optional[str] = ..., portal_path: _Optional[str] = ..., delayed_path: _Optional[str] = ..., disable_kidney_crop: _Optional[bool] = ..., output_dir: _Optional[str] = ..., inline: _Optional[bool] = ..., mode: _Optional[_Union[InferenceMode, str]] = ..., dicom: _Optional[_Union[_volume_pb2.DicomSelection, _Mapping]] = ...) -> None: ...

class SegmentCaseRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SegmentCaseParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SegmentCaseParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentCaseResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SegmentationResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class SegmentParams(_message.Message):
    __slots__ = ("task", "phase_paths", "disable_kidney_crop", "output", "mode", "dicom")
    class PhasePathsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    PHASE_PATHS_FIELD_NUMBER: _ClassVar[int]
    DISABLE_KIDNEY_CROP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    DICOM_FIELD_NUMBER: _ClassVar[int]
    task: str
    phase_paths: _containers.ScalarMap[str, str]
    disable_kidney_crop: bool
    output: _volume_pb2.OutputOptions
    mode: InferenceMode
    dicom: _volume_pb2.DicomSelection
    def __init__(self, task: _Optional[str] = ..., phase_paths: _Optional[_Mapping[str, str]] = ..., disable_kidney_crop: _Optional[bool] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ..., mode: _Optional[_Union[InferenceMode, str]] = ..., dicom: _Optional[_Union[_volume_pb2.DicomSelection, _Mapping]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SegmentParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SegmentParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SegmentationResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SegmentationResult, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("task", "phases", "labels", "model_folders", "ready", "kidney_crop", "model_versions", "digest", "accurate", "fast", "name", "nnunet_version", "training_spacings")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FOLDERS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    KIDNEY_CROP_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ACCURATE_FIELD_NUMBER: _ClassVar[int]
    FAST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NNUNET_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SPACINGS_FIELD_NUMBER: _ClassVar[int]
    task: Task
    phases: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedCompositeFieldContainer[_volume_pb2.LabelEntry]
    model_folders: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    kidney_crop: bool
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    accurate: InferenceSettings
    fast: InferenceSettings
    name: str
    nnunet_version: str
    training_spacings: _containers.RepeatedCompositeFieldContainer[TrainingSpacing]
    def __init__(self, task: _Optional[_Union[Task, str]] = ..., phases: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[_Union[_volume_pb2.LabelEntry, _Mapping]]] = ..., model_folders: _Optional[_Iterable[str]] = ..., ready: _Optional[bool] = ..., kidney_crop: _Optional[bool] = ..., model_versions: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., accurate: _Optional[_Union[InferenceSettings, _Mapping]] = ..., fast: _Optional[_Union[InferenceSettings, _Mapping]] = ..., name: _Optional[str] = ..., nnunet_version: _Optional[str] = ..., training_spacings: _Optional[_Iterable[_Union[TrainingSpacing, _Mapping]]] = ...) -> None: ...

class TrainingSpacing(_message.Message):
    __slots__ = ("x_mm", "y_mm", "z_mm")
    X_MM_FIELD_NUMBER: _ClassVar[int]
    Y_MM_FIELD_NUMBER: _ClassVar[int]
    Z_MM_FIELD_NUMBER: _ClassVar[int]
    x_mm: float
    y_mm: float
    z_mm: float
    def __init__(self, x_mm: _Optional[float] = ..., y_mm: _Optional[float] = ..., z_mm: _Optional[float] = ...) -> None: ...

class InferenceSettings(_message.Message):
    __slots__ = ("tile_step_size", "max_folds")
    TILE_STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_FOLDS_FIELD_NUMBER: _ClassVar[int]
    tile_step_size: float
    max_folds: int
    def __init__(self, tile_step_size: _Optional[float] = ..., max_folds: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "device", "queue_depth", "queue_capacity", "load_error", "reload_error")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    RELOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    device: str
    queue_depth: int
    queue_capacity: int
    load_error: str
    reload_error: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., device: _Optional[str] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., load_error: _Optional[str] = ..., reload_error: _Optional[str] = ...) -> None: ...
