from medseg.volume.v1 import volume_pb2 as _volume_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CoordinateSystem(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COORDINATE_SYSTEM_UNSPECIFIED: _ClassVar[CoordinateSystem]
    COORDINATE_SYSTEM_LPS: _ClassVar[CoordinateSystem]
    COORDINATE_SYSTEM_RAS: _ClassVar[CoordinateSystem]

class MeshFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESH_FORMAT_UNSPECIFIED: _ClassVar[MeshFormat]
    MESH_FORMAT_OBJ: _ClassVar[MeshFormat]
    MESH_FORMAT_STL: _ClassVar[MeshFormat]
    MESH_FORMAT_PLY: _ClassVar[MeshFormat]
    MESH_FORMAT_GLB: _ClassVar[MeshFormat]

class MeshMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESH_METHOD_UNSPECIFIED: _ClassVar[MeshMethod]
    MESH_METHOD_SURFACE_NETS: _ClassVar[MeshMethod]
    MESH_METHOD_FLYING_EDGES: _ClassVar[MeshMethod]
COORDINATE_SYSTEM_UNSPECIFIED: CoordinateSystem
COORDINATE_SYSTEM_LPS: CoordinateSystem
COORDINATE_SYSTEM_RAS: CoordinateSystem
MESH_FORMAT_UNSPECIFIED: MeshFormat
MESH_FORMAT_OBJ: MeshFormat
MESH_FORMAT_STL: MeshFormat
MESH_FORMAT_PLY: MeshFormat
MESH_FORMAT_GLB: MeshFormat
MESH_METHOD_UNSPECIFIED: MeshMethod
MESH_METHOD_SURFACE_NETS: MeshMethod
MESH_METHOD_FLYING_EDGES: MeshMethod

class MeshMaskParams(_message.Message):
    __slots__ = ("mask_path", "labels", "smoothing", "decimation", "min_island_mm3", "coordinate_system", "format", "output_path", "inline", "file_stem", "method")
    MASK_PATH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    DECIMATION_FIELD_NUMBER: _ClassVar[int]
    MIN_ISLAND_MM3_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_SYSTEM_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PATH_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    FILE_STEM_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    mask_path: str
    labels: _containers.RepeatedScalarFieldContainer[int]
    smoothing: float
    decimation: float
    min_island_mm3: float
    coordinate_system: CoordinateSystem
    format: MeshFormat
    output_path: str
    inline: bool
    file_stem: str
    method: MeshMethod
    def __init__(self, mask_path: _Optional[str] = ..., labels: _Optional[_Iterable[int]] = ..., smoothing: _Optional[float] = ..., decimation: _Optional[float] = ..., min_island_mm3: _Optional[float] = ..., coordinate_system: _Optional[_Union[CoordinateSystem, str]] = ..., format: _Optional[_Union[MeshFormat, str]] = ..., output_path: _Optional[str] = ..., inline: _Optional[bool] = ..., file_stem: _Optional[str] = ..., method: _Optional[_Union[MeshMethod, str]] = ...) -> None: ...

class MeshMaskRequest(_message.Message):
    __slots__ = ("params", "chunk")
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    params: MeshMaskParams
    chunk: _volume_pb2.VolumeChunk
    def __init__(self, params: _Optional[_Union[MeshMaskParams, _Mapping]] = ..., chunk: _Optional[_Union[_volume_pb2.VolumeChunk, _Mapping]] = ...) -> None: ...

class MeshSummary(_message.Message):
    __slots__ = ("label", "name", "vertices", "faces", "volume_ml", "area_mm2", "closed", "note")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERTICES_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    AREA_MM2_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    label: int
    name: str
    vertices: int
    faces: int
    volume_ml: float
    area_mm2: float
    closed: bool
    note: str
    def __init__(self, label: _Optional[int] = ..., name: _Optional[str] = ..., vertices: _Optional[int] = ..., faces: _Optional[int] = ..., volume_ml: _Optional[float] = ..., area_mm2: _Optional[float] = ..., closed: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class MeshMaskResult(_message.Message):
    __slots__ = ("meshes", "paths", "note", "info")
    MESHES_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    meshes: _containers.RepeatedCompositeFieldContainer[MeshSummary]
    paths: _containers.RepeatedScalarFieldContainer[str]
    note: str
    info: _volume_pb2.ResultInfo
    def __init__(self, meshes: _Optional[_Iterable[_Union[MeshSummary, _Mapping]]] = ..., paths: _Optional[_Iterable[str]] = ..., note: _Optional[str] = ..., info: _Optional[_Union[_volume_pb2.ResultInfo, _Mapping]] = ...) -> None: ...

class MeshMaskResponse(_message.Message):
    __slots__ = ("progress", "file", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: _volume_pb2.Progress
    file: _volume_pb2.FileChunk
    result: MeshMaskResult
    def __init__(self, progress: _Optional[_Union[_volume_pb2.Progress, _Mapping]] = ..., file: _Optional[_Union[_volume_pb2.FileChunk, _Mapping]] = ..., result: _Optional[_Union[MeshMaskResult, _Mapping]] = ...) -> None: ...
