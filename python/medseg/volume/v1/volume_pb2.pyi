from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Label(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_UNSPECIFIED: _ClassVar[Label]
    LABEL_KIDNEY: _ClassVar[Label]
    LABEL_TUMOR: _ClassVar[Label]
    LABEL_ARTERY: _ClassVar[Label]
    LABEL_VEIN: _ClassVar[Label]
    LABEL_URETER: _ClassVar[Label]
    LABEL_FAT: _ClassVar[Label]

class VoxelType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOXEL_TYPE_UNSPECIFIED: _ClassVar[VoxelType]
    VOXEL_TYPE_UINT8: _ClassVar[VoxelType]
    VOXEL_TYPE_INT8: _ClassVar[VoxelType]
    VOXEL_TYPE_UINT16: _ClassVar[VoxelType]
    VOXEL_TYPE_INT16: _ClassVar[VoxelType]
    VOXEL_TYPE_UINT32: _ClassVar[VoxelType]
    VOXEL_TYPE_INT32: _ClassVar[VoxelType]
    VOXEL_TYPE_FLOAT32: _ClassVar[VoxelType]
    VOXEL_TYPE_FLOAT64: _ClassVar[VoxelType]

class VolumeEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_ENCODING_UNSPECIFIED: _ClassVar[VolumeEncoding]
    VOLUME_ENCODING_RAW: _ClassVar[VolumeEncoding]
    VOLUME_ENCODING_NIFTI: _ClassVar[VolumeEncoding]

class VolumeCompression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_COMPRESSION_UNSPECIFIED: _ClassVar[VolumeCompression]
    VOLUME_COMPRESSION_GZIP: _ClassVar[VolumeCompression]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_VOLUME: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_DICOM_SEG: _ClassVar[OutputFormat]
LABEL_UNSPECIFIED: Label
LABEL_KIDNEY: Label
LABEL_TUMOR: Label
LABEL_ARTERY: Label
LABEL_VEIN: Label
LABEL_URETER: Label
LABEL_FAT: Label
VOXEL_TYPE_UNSPECIFIED: VoxelType
VOXEL_TYPE_UINT8: VoxelType
VOXEL_TYPE_INT8: VoxelType
VOXEL_TYPE_UINT16: VoxelType
VOXEL_TYPE_INT16: VoxelType
VOXEL_TYPE_UINT32: VoxelType
VOXEL_TYPE_INT32: VoxelType
VOXEL_TYPE_FLOAT32: VoxelType
VOXEL_TYPE_FLOAT64: VoxelType
VOLUME_ENCODING_UNSPECIFIED: VolumeEncoding
VOLUME_ENCODING_RAW: VolumeEncoding
VOLUME_ENCODING_NIFTI: VolumeEncoding
VOLUME_COMPRESSION_UNSPECIFIED: VolumeCompression
VOLUME_COMPRESSION_GZIP: VolumeCompression
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_VOLUME: OutputFormat
OUTPUT_FORMAT_DICOM_SEG: OutputFormat
LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
label_name: _descriptor.FieldDescriptor
LABEL_COLOR_FIELD_NUMBER: _ClassVar[int]
label_color: _descriptor.FieldDescriptor

class LabelEntry(_message.Message):
    __slots__ = ("value", "name")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    value: int
    name: str
    def __init__(self, value: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class VolumeHeader(_message.Message):
    __slots__ = ("role", "encoding", "total_bytes", "size", "spacing", "origin", "direction", "voxel_type", "labels", "sha256", "compression", "bits_per_voxel", "chunk_bytes")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    VOXEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_VOXEL_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    role: str
    encoding: VolumeEncoding
    total_bytes: int
    size: _containers.RepeatedScalarFieldContainer[int]
    spacing: _containers.RepeatedScalarFieldContainer[float]
    origin: _containers.RepeatedScalarFieldContainer[float]
    direction: _containers.RepeatedScalarFieldContainer[float]
    voxel_type: VoxelType
    labels: _containers.RepeatedCompositeFieldContainer[LabelEntry]
    sha256: str
    compression: VolumeCompression
    bits_per_voxel: int
    chunk_bytes: int
    def __init__(self, role: _Optional[str] = ..., encoding: _Optional[_Union[VolumeEncoding, str]] = ..., total_bytes: _Optional[int] = ..., size: _Optional[_Iterable[int]] = ..., spacing: _Optional[_Iterable[float]] = ..., origin: _Optional[_Iterable[float]] = ..., direction: _Optional[_Iterable[float]] = ..., voxel_type: _Optional[_Union[VoxelType, str]] = ..., labels: _Optional[_Iterable[_Union[LabelEntry, _Mapping]]] = ..., sha256: _Optional[str] = ..., compression: _Optional[_Union[VolumeCompression, str]] = ..., bits_per_voxel: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class VolumeChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: VolumeHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[VolumeHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("name", "data", "total_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    data: bytes
    total_bytes: int
    def __init__(self, name: _Optional[str] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "fraction", "message")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    stage: str
    fraction: float
    message: str
    def __init__(self, stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ...) -> None: ...

class Digest(_message.Message):
    __slots__ = ("role", "path", "sha256", "bytes")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    role: str
    path: str
    sha256: str
    bytes: int
    def __init__(self, role: _Optional[str] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("min_index", "max_index", "min_mm", "max_mm")
    MIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    MAX_INDEX_FIELD_NUMBER: _ClassVar[int]
    MIN_MM_FIELD_NUMBER: _ClassVar[int]
    MAX_MM_FIELD_NUMBER: _ClassVar[int]
    min_index: _containers.RepeatedScalarFieldContainer[int]
    max_index: _containers.RepeatedScalarFieldContainer[int]
    min_mm: _containers.RepeatedScalarFieldContainer[float]
    max_mm: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, min_index: _Optional[_Iterable[int]] = ..., max_index: _Optional[_Iterable[int]] = ..., min_mm: _Optional[_Iterable[float]] = ..., max_mm: _Optional[_Iterable[float]] = ...) -> None: ...

class LabelSummary(_message.Message):
    __slots__ = ("value", "name", "voxel_count", "volume_ml", "bbox")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VOXEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    value: int
    name: str
    voxel_count: int
    volume_ml: float
    bbox: BoundingBox
    def __init__(self, value: _Optional[int] = ..., name: _Optional[str] = ..., voxel_count: _Optional[int] = ..., volume_ml: _Optional[float] = ..., bbox: _Optional[_Union[BoundingBox, _Mapping]] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("stage", "seconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    seconds: float
    def __init__(self, stage: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class OutputVolume(_message.Message):
    __slots__ = ("role", "path", "labels")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    role: str
    path: str
    labels: _containers.RepeatedCompositeFieldContainer[LabelSummary]
    def __init__(self, role: _Optional[str] = ..., path: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[LabelSummary, _Mapping]]] = ...) -> None: ...

class ResultInfo(_message.Message):
    __slots__ = ("received", "sent", "timings", "notes")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    received: _containers.RepeatedCompositeFieldContainer[Digest]
    sent: _containers.RepeatedCompositeFieldContainer[Digest]
    timings: _containers.RepeatedCompositeFieldContainer[Timing]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, received: _Optional[_Iterable[_Union[Digest, _Mapping]]] = ..., sent: _Optional[_Iterable[_Union[Digest, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[Timing, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class OutputOptions(_message.Message):
    __slots__ = ("path", "inline", "compression", "format")
    PATH_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    path: str
    inline: bool
    compression: VolumeCompression
    format: OutputFormat
    def __init__(self, path: _Optional[str] = ..., inline: _Optional[bool] = ..., compression: _Optional[_Union[VolumeCompression, str]] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class DicomSelection(_message.Message):
    __slots__ = ("series_uids", "allow_non_ct")
    SERIES_UIDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_NON_CT_FIELD_NUMBER: _ClassVar[int]
    series_uids: _containers.RepeatedScalarFieldContainer[str]
    allow_non_ct: bool
    def __init__(self, series_uids: _Optional[_Iterable[str]] = ..., allow_non_ct: _Optional[bool] = ...) -> None: ...
