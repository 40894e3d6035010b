"""Graph backends for repair (postprocess_svc.graph): SciPy on known graphs, cugraph = SciPy."""
from __future__ import annotations

import numpy as np
import pytest

from medseg.labels import Label
from postprocess_svc import graph as graph_module
from postprocess_svc.graph import ScipyBackend, canonical_components, cugraph_available, select_backend
from postprocess_svc.repair import SkeletonGraph, connect_label
from tests.repair_cases import segment, tube_case

ARTERY = int(Label.ARTERY)


def test_connected_components_of_a_known_graph():
    # 0-1-2 path, 3-4 pair, 5 alone, 6-7-8 triangle (a cycle), duplicate and reversed edges
    edges = np.array([[0, 1], [2, 1], [3, 4], [6, 7], [7, 8], [8, 6], [1, 0]])
    labels = ScipyBackend().connected_components(9, edges)
    assert labels.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3]


def test_connected_components_edge_cases():
    backend = ScipyBackend()
    assert backend.connected_components(0, np.zeros((0, 2))).tolist() == []
    assert backend.connected_components(3, np.zeros((0, 2))).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="edge node ids"):
        backend.connected_components(3, np.array([[0, 3]]))
    with pytest.raises(ValueError, match="edge node ids"):
        backend.connected_components(3, np.array([[-1, 0]]))


def test_canonical_numbering_follows_first_node():
    assert canonical_components(np.array([7, 7, 2, 9, 2, 7])).tolist() == [0, 0, 1, 2, 1, 0]


def test_minimum_spanning_edges_of_a_known_graph():
    # square 0-1-2-3 with a diagonal; cheapest spanning tree: 0-1 (1), 1-2 (2), 0-3 (3)
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [4, 5]])
    weights = np.array([1.0, 2.0, 5.0, 3.0, 4.0, -2.0])  # negative weights are fine
    chosen = ScipyBackend().minimum_spanning_edges(6, edges, weights)
    assert chosen.tolist() == [0, 1, 3, 5]  # a forest: 4-5 is its own tree
    # duplicate edge: the cheaper copy is the one chosen
    chosen = ScipyBackend().minimum_spanning_edges(2, np.array([[0, 1], [1, 0]]), np.array([3.0, 1.0]))
    assert chosen.tolist() == [1]
    with pytest.raises(ValueError, match="weights"):
        ScipyBackend().minimum_spanning_edges(2, np.array([[0, 1]]), np.array([1.0, 2.0]))


def test_select_backend():
    assert select_backend("scipy").name == "scipy"
    assert isinstance(select_backend(ScipyBackend()), ScipyBackend)
    with pytest.raises(ValueError, match="must be 'auto', 'scipy' or 'cugraph'"):
        select_backend("networkx")
    if cugraph_available():
        assert select_backend("auto").name == "cugraph"
    else:
        assert select_backend("auto").name == "scipy"
        with pytest.raises(ValueError, match="'cugraph' is not available"):
            select_backend("cugraph")


def test_skeleton_graph_of_a_straight_tube_is_one_line():
    from scipy import ndimage
    from skimage.morphology import skeletonize

    line = segment((12, 12, 4), (12, 12, 56))
    mask, _ = tube_case((1.0, 1.0, 1.0), (24, 24, 60), line, 3.0, [], ARTERY)
    target = mask.array == ARTERY
    radius = ndimage.distance_transform_edt(target).astype(np.float32)
    skeleton = SkeletonGraph.build(skeletonize(target), 1.0, radius, ScipyBackend())
    skeleton.prune_spurs()
    degree = skeleton.degree()
    assert len(set(skeleton.component[skeleton.alive].tolist())) == 1
    assert np.count_nonzero(degree == 1) == 2 and np.count_nonzero(degree >= 3) == 0
    # it runs along the axis for most of the tube (the ends retreat by about a radius)
    z = skeleton.position[skeleton.alive][:, 0]
    assert z.max() - z.min() >= 52 - 2 * 3.0 - 2
    ends = skeleton.endpoints(5.0, ndimage.label(target)[0])
    assert len(ends) == 2
    for end in ends:
        assert abs(end.tangent[0]) > 0.99 and end.radius == pytest.approx(3.0, rel=0.2)


def _random_graph(seed: int, n: int = 2000, e: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(e, 2))


def test_cugraph_gives_the_same_components_and_bridges_as_scipy():
    pytest.importorskip("cugraph")
    if not cugraph_available():
        pytest.skip("cugraph imports but no CUDA device is visible")
    gpu, cpu = graph_module.CugraphBackend(), ScipyBackend()
    for seed in range(3):
        edges = _random_graph(seed)
        assert np.array_equal(gpu.connected_components(2000, edges), cpu.connected_components(2000, edges))
        weights = np.random.default_rng(seed).random(len(edges))
        assert np.array_equal(gpu.minimum_spanning_edges(2000, edges, weights), cpu.minimum_spanning_edges(2000, edges, weights))
    line = segment((15, 15, 4), (15, 15, 86))
    cut, _ = tube_case((1.0, 1.0, 1.0), (30, 30, 90), line, 3.0, [(18.0, 2.0), (40.0, 5.0), (64.0, 8.0)], ARTERY)
    (out_gpu, report_gpu), (out_cpu, report_cpu) = (connect_label(cut, ARTERY, backend=b) for b in ("cugraph", "scipy"))
    assert report_gpu.backend == "cugraph" and report_cpu.backend == "scipy"
    assert report_gpu.bridges == report_cpu.bridges and np.array_equal(out_gpu.array, out_cpu.array)
