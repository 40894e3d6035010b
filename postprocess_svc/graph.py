"""Graph work for vessel/ureter repair behind one small interface, with two backends.

The repair code builds plain arrays (node count, an (E, 2) edge list, weights) and asks a
`GraphBackend` for the graph answers it needs. `ScipyBackend` (scipy.sparse.csgraph) always
works; `CugraphBackend` runs the same questions on the GPU with RAPIDS cugraph and is only
constructed when cugraph, cupy and a CUDA device are present.

Both backends return results in one canonical form (component ids numbered in order of each
component's lowest node index; MST edges as sorted index pairs), so comparing them is
`np.array_equal(a.connected_components(n, e), b.connected_components(n, e))`.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph


@runtime_checkable
class GraphBackend(Protocol):
    name: str

    def connected_components(self, n_nodes: int, edges: np.ndarray) -> np.ndarray:
        """Component id per node (int64, canonical numbering) for an undirected graph."""
        ...

    def minimum_spanning_edges(self, n_nodes: int, edges: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Indices into `edges` of a minimum spanning forest (sorted ascending)."""
        ...


def _check_edges(n_nodes: int, edges: np.ndarray) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    if n_nodes < 0:
        raise ValueError(f"n_nodes must be >= 0, got {n_nodes}")
    if edges.size and (edges.min() < 0 or edges.max() >= n_nodes):
        raise ValueError(f"edge node ids must lie in [0, {n_nodes}), got [{edges.min()}, {edges.max()}]")
    return edges


def _check_weighted_edges(n_nodes: int, edges, weights) -> tuple[np.ndarray, np.ndarray]:
    """_check_edges plus one float weight per edge."""
    edges = _check_edges(n_nodes, edges)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(weights) != len(edges):
        raise ValueError(f"weights has {len(weights)} entries for {len(edges)} edges")
    return edges, weights


def canonical_components(labels: np.ndarray) -> np.ndarray:
    """Renumber component ids so that ids follow the order of each component's first node.

    Backends number components differently; this makes their answers directly comparable."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return labels
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first_index.size, dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(first_index.size)
    return rank[inverse.reshape(-1)]


def _mst_edge_indices(edges: np.ndarray, weights: np.ndarray, tree_pairs: np.ndarray) -> np.ndarray:
    """Map (u, v) pairs of a spanning forest back to indices in the caller's edge list."""
    lo = np.minimum(edges[:, 0], edges[:, 1])
    hi = np.maximum(edges[:, 0], edges[:, 1])
    key: dict[tuple[int, int], int] = {}
    for index, pair in enumerate(zip(lo.tolist(), hi.tolist())):
        if pair not in key or weights[index] < weights[key[pair]]:
            key[pair] = index  # duplicate edges: the cheapest stands for all
    chosen = [key[(min(u, v), max(u, v))] for u, v in tree_pairs.tolist()]
    return np.array(sorted(chosen), dtype=np.int64)


class ScipyBackend:
    """CPU backend: scipy.sparse.csgraph."""

    name = "scipy"

    def connected_components(self, n_nodes: int, edges: np.ndarray) -> np.ndarray:
        edges = _check_edges(n_nodes, edges)
        if n_nodes == 0:
            return np.zeros(0, dtype=np.int64)
        matrix = sp.coo_matrix(
            (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes)
        ).tocsr()
        _, labels = csgraph.connected_components(matrix, directed=False)
        return canonical_components(labels)

    def minimum_spanning_edges(self, n_nodes: int, edges: np.ndarray, weights: np.ndarray) -> np.ndarray:
        edges, weights = _check_weighted_edges(n_nodes, edges, weights)
        if len(edges) == 0:
            return np.zeros(0, dtype=np.int64)
        # csgraph treats 0 as "no edge"; shift weights so every real edge stays present.
        shifted = weights - weights.min() + 1.0
        lo = np.minimum(edges[:, 0], edges[:, 1])
        hi = np.maximum(edges[:, 0], edges[:, 1])
        # A sparse matrix would add up duplicate edges; keep the cheapest of each instead.
        matrix = _min_duplicates(lo, hi, shifted, n_nodes)
        tree = csgraph.minimum_spanning_tree(matrix).tocoo()
        return _mst_edge_indices(edges, weights, np.column_stack([tree.row, tree.col]))


def _min_duplicates(lo: np.ndarray, hi: np.ndarray, w: np.ndarray, n: int) -> sp.csr_matrix:
    order = np.lexsort((w, hi, lo))
    lo, hi, w = lo[order], hi[order], w[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return sp.csr_matrix((w[first], (lo[first], hi[first])), shape=(n, n))


class CugraphBackend:
    """GPU backend: RAPIDS cugraph on CuPy sparse matrices. Imports happen here, lazily, so
    importing this module never needs a GPU."""

    name = "cugraph"

    def __init__(self) -> None:
        import cupy  # noqa: F401  (raises ImportError when absent)
        import cugraph  # noqa: F401

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device visible")
        self._cupy = cupy
        self._cugraph = cugraph

    def _matrix(self, n_nodes: int, rows: np.ndarray, cols: np.ndarray, values: np.ndarray):
        import cupyx.scipy.sparse as cusparse

        cp = self._cupy
        return cusparse.coo_matrix(
            (cp.asarray(values), (cp.asarray(rows), cp.asarray(cols))), shape=(n_nodes, n_nodes)
        ).tocsr()

    def connected_components(self, n_nodes: int, edges: np.ndarray) -> np.ndarray:
        edges = _check_edges(n_nodes, edges)
        if n_nodes == 0:
            return np.zeros(0, dtype=np.int64)
        # Both directions, so weak components of the directed matrix are the undirected ones.
        rows = np.concatenate([edges[:, 0], edges[:, 1], np.arange(n_nodes)])
        cols = np.concatenate([edges[:, 1], edges[:, 0], np.arange(n_nodes)])  # self loops keep isolated nodes
        matrix = self._matrix(n_nodes, rows.astype(np.int32), cols.astype(np.int32), np.ones(len(rows), np.float32))
        result = self._cugraph.connected_components(matrix, connection="weak")
        labels = result[1] if isinstance(result, tuple) else result
        return canonical_components(self._cupy.asnumpy(labels))

    def minimum_spanning_edges(self, n_nodes: int, edges: np.ndarray, weights: np.ndarray) -> np.ndarray:
        edges, weights = _check_weighted_edges(n_nodes, edges, weights)
        if len(edges) == 0:
            return np.zeros(0, dtype=np.int64)
        import cudf

        shifted = weights - weights.min() + 1.0
        frame = cudf.DataFrame({"src": edges[:, 0], "dst": edges[:, 1], "w": shifted})
        graph = self._cugraph.Graph(directed=False)
        graph.from_cudf_edgelist(frame, source="src", destination="dst", edge_attr="w", renumber=True)
        tree = self._cugraph.minimum_spanning_tree(graph).view_edge_list().to_pandas()
        # The first two columns are the (un-renumbered) source and destination ids.
        return _mst_edge_indices(edges, weights, tree.iloc[:, :2].to_numpy(dtype=np.int64))


def cugraph_available() -> bool:
    """True when cugraph and cupy import and a CUDA device is visible."""
    try:
        CugraphBackend()
    except Exception:  # ImportError, CUDA runtime errors: all mean "not here"
        return False
    return True


def select_backend(prefer: str = "auto") -> GraphBackend:
    """'auto': cugraph when importable with a CUDA device, else scipy; 'scipy'; 'cugraph'
    (ValueError when it cannot be used here)."""
    if isinstance(prefer, (ScipyBackend, CugraphBackend)):
        return prefer
    choice = (prefer or "auto").lower()
    if choice == "scipy":
        return ScipyBackend()
    if choice == "cugraph":
        try:
            return CugraphBackend()
        except Exception as error:
            raise ValueError(f"graph backend 'cugraph' is not available here: {error}") from error
    if choice == "auto":
        try:
            return CugraphBackend()
        except Exception:
            return ScipyBackend()
    raise ValueError(f"graph backend must be 'auto', 'scipy' or 'cugraph', got {prefer!r}")
