from medseg.volume.v1 import volume_pb2 as _volume_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GraphBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_BACKEND_UNSPECIFIED: _ClassVar[GraphBackend]
    GRAPH_BACKEND_SCIPY: _ClassVar[GraphBackend]
    GRAPH_BACKEND_CUGRAPH: _ClassVar[GraphBackend]
GRAPH_BACKEND_UNSPECIFIED: GraphBackend
GRAPH_BACKEND_SCIPY: GraphBackend
GRAPH_BACKEND_CUGRAPH: GraphBackend

class AddFatParams(_message.Message):
    __slots__ = ("mask_path", "organs_path", "ct_path", "margin_mm", "hu_min", "hu_max", "output")
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    ORGANS_PATH_FIELD_NUMBER: _ClassVar[int]
    CT_PATH_FIELD_NUMBER: _ClassVar[int]
    MARGIN_MM_FIELD_NUMBER: _ClassVar[int]
    HU_MIN_FIELD_NUMBER: _ClassVar[int]
    HU_MAX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    mask_path: str
    organs_path: str
    ct_path: str
    margin_mm: float
    hu_min: float
    hu_max: float
    output: _volume_pb2.OutputOptions
    def __init__(self, mask_path: _Optional[str] = ..., organs_path: _Optional[str] = ..., ct_path: _Optional[str] = ..., margin_mm: _Optional[float] = ..., hu_min: _Optional[float] = ..., hu_max: _Optional[float] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class AddFatRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: AddFatParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[AddFatParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class AddFatResult(_message.Message):
    __slots__ = ("output", "fat_volume_ml", "used_ct", "note", "info")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FAT_VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    USED_CT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    output: _volume_pb2.OutputVolume
    fat_volume_ml: float
    used_ct: bool
    note: str
    info: _volume_pb2.ResultInfo
    def __init__(self, output: _Optional[_Union[_volume_pb2.OutputVolume, _Mapping]] = ..., fat_volume_ml: _Optional[float] = ..., used_ct: _Optional[bool] = ..., note: _Optional[str] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ...) -> None: ...

class AddFatResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: AddFatResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[AddFatResult, _Mapping]] = ...) -> None: ...

class SampleFromTemplateParams(_message.Message):
    __slots__ = ("mask_path", "template_path", "output")
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_PATH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    mask_path: str
    template_path: str
    output: _volume_pb2.OutputOptions
    def __init__(self, mask_path: _Optional[str] = ..., template_path: _Optional[str] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class SampleFromTemplateRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: SampleFromTemplateParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[SampleFromTemplateParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class TemplateFit(_message.Message):
    __slots__ = ("kidney_dice_before", "kidney_dice_after", "metric_value", "note")
    KIDNEY_DICE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    KIDNEY_DICE_AFTER_FIELD_NUMBER: _ClassVar[int]
    METRIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    kidney_dice_before: float
    kidney_dice_after: float
    metric_value: float
    note: str
    def __init__(self, kidney_dice_before: _Optional[float] = ..., kidney_dice_after: _Optional[float] = ..., metric_value: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class SampleFromTemplateResult(_message.Message):
    __slots__ = ("output", "fit", "info")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    output: _volume_pb2.OutputVolume
    fit: TemplateFit
    info: _volume_pb2.ResultInfo
    def __init__(self, output: _Optional[_Union[_volume_pb2.OutputVolume, _Mapping]] = ..., fit: _Optional[_Union[TemplateFit, _Mapping]] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ...) -> None: ...

class SampleFromTemplateResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: SampleFromTemplateResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[SampleFromTemplateResult, _Mapping]] = ...) -> None: ...

class RepairLimits(_message.Message):
    __slots__ = ("max_gap_mm", "max_angle_deg", "min_radius_ratio")
    MAX_GAP_MM_FIELD_NUMBER: _ClassVar[int]
    MAX_ANGLE_DEG_FIELD_NUMBER: _ClassVar[int]
    MIN_RADIUS_RATIO_FIELD_NUMBER: _ClassVar[int]
    max_gap_mm: float
    max_angle_deg: float
    min_radius_ratio: float
    def __init__(self, max_gap_mm: _Optional[float] = ..., max_angle_deg: _Optional[float] = ..., min_radius_ratio: _Optional[float] = ...) -> None: ...

class Bridge(_message.Message):
    __slots__ = ("label", "length_mm", "radius_start_mm", "radius_end_mm", "start_mm", "end_mm", "voxels_added")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LENGTH_MM_FIELD_NUMBER: _ClassVar[int]
    RADIUS_START_MM_FIELD_NUMBER: _ClassVar[int]
    RADIUS_END_MM_FIELD_NUMBER: _ClassVar[int]
    START_MM_FIELD_NUMBER: _ClassVar[int]
    END_MM_FIELD_NUMBER: _ClassVar[int]
    VOXELS_ADDED_FIELD_NUMBER: _ClassVar[int]
    label: int
    length_mm: float
    radius_start_mm: float
    radius_end_mm: float
    start_mm: _containers.RepeatedScalarFieldContainer[float]
    end_mm: _containers.RepeatedScalarFieldContainer[float]
    voxels_added: int
    def __init__(self, label: _Optional[int] = ..., length_mm: _Optional[float] = ..., radius_start_mm: _Optional[float] = ..., radius_end_mm: _Optional[float] = ..., start_mm: _Optional[_Iterable[float]] = ..., end_mm: _Optional[_Iterable[float]] = ..., voxels_added: _Optional[int] = ...) -> None: ...

class RepairReport(_message.Message):
    __slots__ = ("pieces_before", "pieces_after", "bridges", "rejected", "backend", "note")
    PIECES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PIECES_AFTER_FIELD_NUMBER: _ClassVar[int]
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    pieces_before: int
    pieces_after: int
    bridges: _containers.RepeatedCompositeFieldContainer[Bridge]
    rejected: _containers.RepeatedScalarFieldContainer[str]
    backend: str
    note: str
    def __init__(self, pieces_before: _Optional[int] = ..., pieces_after: _Optional[int] = ..., bridges: _Optional[_Iterable[_Union[Bridge, _Mapping]]] = ..., rejected: _Optional[_Iterable[str]] = ..., backend: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ConnectVesselsParams(_message.Message):
    __slots__ = ("mask_path", "limits", "backend", "output")
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    mask_path: str
    limits: RepairLimits
    backend: GraphBackend
    output: _volume_pb2.OutputOptions
    def __init__(self, mask_path: _Optional[str] = ..., limits: _Optional[_Union[RepairLimits, _Mapping]] = ..., backend: _Optional[_Union[GraphBackend, str]] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class ConnectVesselsRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: ConnectVesselsParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[ConnectVesselsParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class ConnectVesselsResult(_message.Message):
    __slots__ = ("output", "report", "info")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    output: _volume_pb2.OutputVolume
    report: RepairReport
    info: _volume_pb2.ResultInfo
    def __init__(self, output: _Optional[_Union[_volume_pb2.OutputVolume, _Mapping]] = ..., report: _Optional[_Union[RepairReport, _Mapping]] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ...) -> None: ...

class ConnectVesselsResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: ConnectVesselsResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[ConnectVesselsResult, _Mapping]] = ...) -> None: ...

class ConnectUretersParams(_message.Message):
    __slots__ = ("mask_path", "limits", "backend", "output")
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    mask_path: str
    limits: RepairLimits
    backend: GraphBackend
    output: _volume_pb2.OutputOptions
    def __init__(self, mask_path: _Optional[str] = ..., limits: _Optional[_Union[RepairLimits, _Mapping]] = ..., backend: _Optional[_Union[GraphBackend, str]] = ..., output: _Optional[_Union[_volume_pb2.OutputOptions, _Mapping]] = ...) -> None: ...

class ConnectUretersRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: ConnectUretersParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[ConnectUretersParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class ConnectUretersResult(_message.Message):
    __slots__ = ("output", "report", "info")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    output: _volume_pb2.OutputVolume
    report: RepairReport
    info: _volume_pb2.ResultInfo
    def __init__(self, output: _Optional[_Union[_volume_pb2.OutputVolume, _Mapping]] = ..., report: _Optional[_Union[RepairReport, _Mapping]] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ...) -> None: ...

class ConnectUretersResponse(_message.Message):
    __slots__ = ("progress", "chunk", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    chunk: _volume_pb2.VolumeChunk
    result: ConnectUretersResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ..., result: _Optional[_Union[ConnectUretersResult, _Mapping]] = ...) -> None: ...

class MeasureParams(_message.Message):
    __slots__ = ("mask_path", "tumor_facts")
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    TUMOR_FACTS_FIELD_NUMBER: _ClassVar[int]
    mask_path: str
    tumor_facts: bool
    def __init__(self, mask_path: _Optional[str] = ..., tumor_facts: _Optional[bool] = ...) -> None: ...

class MeasureRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: MeasureParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[MeasureParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class Component(_message.Message):
    __slots__ = ("voxel_count", "volume_ml", "bbox", "largest_diameter_mm")
    VOXEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    LARGEST_DIAMETER_MM_FIELD_NUMBER: _ClassVar[int]
    voxel_count: int
    volume_ml: float
    bbox: _volume_pb2.BoundingBox
    largest_diameter_mm: float
    def __init__(self, voxel_count: _Optional[int] = ..., volume_ml: _Optional[float] = ..., bbox: _Optional[_Union[_volume_pb2.BoundingBox, _Mapping]] = ..., largest_diameter_mm: _Optional[float] = ...) -> None: ...

class LabelMeasurement(_message.Message):
    __slots__ = ("value", "name", "voxel_count", "volume_ml", "bbox", "component_count", "largest_diameter_mm", "components")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VOXEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LARGEST_DIAMETER_MM_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    value: int
    name: str
    voxel_count: int
    volume_ml: float
    bbox: _volume_pb2.BoundingBox
    component_count: int
    largest_diameter_mm: float
    components: _containers.RepeatedCompositeFieldContainer[Component]
    def __init__(self, value: _Optional[int] = ..., name: _Optional[str] = ..., voxel_count: _Optional[int] = ..., volume_ml: _Optional[float] = ..., bbox: _Optional[_Union[_volume_pb2.BoundingBox, _Mapping]] = ..., component_count: _Optional[int] = ..., largest_diameter_mm: _Optional[float] = ..., components: _Optional[_Iterable[_Union[Component, _Mapping]]] = ...) -> None: ...

class MeasureResult(_message.Message):
    __slots__ = ("labels", "info", "tumors")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    TUMORS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelMeasurement]
    info: _volume_pb2.ResultInfo
    tumors: _containers.RepeatedCompositeFieldContainer[TumorFacts]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelMeasurement, _Mapping]]] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ..., tumors: _Optional[_Iterable[_Union[TumorFacts, _Mapping]]] = ...) -> None: ...

class RenalScore(_message.Message):
    __slots__ = ("radius", "exophytic", "nearness", "anterior", "location", "total")
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    EXOPHYTIC_FIELD_NUMBER: _ClassVar[int]
    NEARNESS_FIELD_NUMBER: _ClassVar[int]
    ANTERIOR_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    radius: int
    exophytic: int
    nearness: int
    anterior: str
    location: int
    total: int
    def __init__(self, radius: _Optional[int] = ..., exophytic: _Optional[int] = ..., nearness: _Optional[int] = ..., anterior: _Optional[str] = ..., location: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class TumorFacts(_message.Message):
    __slots__ = ("voxel_count", "volume_ml", "centroid_mm", "max_diameter_mm", "side", "polar_location", "exophytic_fraction", "distance_to_sinus_mm", "sinus_source", "distance_to_artery_mm", "distance_to_vein_mm", "renal", "notes")
    VOXEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    CENTROID_MM_FIELD_NUMBER: _ClassVar[int]
    MAX_DIAMETER_MM_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    POLAR_LOCATION_FIELD_NUMBER: _ClassVar[int]
    EXOPHYTIC_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TO_SINUS_MM_FIELD_NUMBER: _ClassVar[int]
    SINUS_SOURCE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TO_ARTERY_MM_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_TO_VEIN_MM_FIELD_NUMBER: _ClassVar[int]
    RENAL_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    voxel_count: int
    volume_ml: float
    centroid_mm: _containers.RepeatedScalarFieldContainer[float]
    max_diameter_mm: float
    side: str
    polar_location: str
    exophytic_fraction: float
    distance_to_sinus_mm: float
    sinus_source: str
    distance_to_artery_mm: float
    distance_to_vein_mm: float
    renal: RenalScore
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, voxel_count: _Optional[int] = ..., volume_ml: _Optional[float] = ..., centroid_mm: _Optional[_Iterable[float]] = ..., max_diameter_mm: _Optional[float] = ..., side: _Optional[str] = ..., polar_location: _Optional[str] = ..., exophytic_fraction: _Optional[float] = ..., distance_to_sinus_mm: _Optional[float] = ..., sinus_source: _Optional[str] = ..., distance_to_artery_mm: _Optional[float] = ..., distance_to_vein_mm: _Optional[float] = ..., renal: _Optional[_Union[RenalScore, _Mapping]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class MeasureResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    result: MeasureResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., result: _Optional[_Union[MeasureResult, _Mapping]] = ...) -> None: ...

class ListLabelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LabelInfo(_message.Message):
    __slots__ = ("value", "name", "color", "enum_name")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    ENUM_NAME_FIELD_NUMBER: _ClassVar[int]
    value: int
    name: str
    color: str
    enum_name: str
    def __init__(self, value: _Optional[int] = ..., name: _Optional[str] = ..., color: _Optional[str] = ..., enum_name: _Optional[str] = ...) -> None: ...

class ListLabelsResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelInfo]
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelInfo, _Mapping]]] = ...) -> None: ...
