"""Eigenvector metrics on subspaces (issue 8): nx.analysis.eigenspace_alignment and
the per-run eig_align_* metrics of the app."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
from hydra import compose, initialize_config_dir

import nthexp as nx
from nthexp.experiment import find_conf_dir, validate
from nthexp.experiment._task import _eig_align_metrics

EPS = float(np.finfo(np.float64).eps)


def _basis(n: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal ``(n, n)`` matrix (QR of a Gaussian one)."""
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]


def _with_eigenpairs(vectors: np.ndarray, values) -> np.ndarray:
    return vectors @ np.diag(values) @ vectors.T


def _rotation_about_diagonal(theta: float) -> np.ndarray:
    r"""The ``(3, 3)`` rotation by ``theta`` about :math:`(1, 1, 1)/\sqrt 3`
    (Rodrigues); at ``theta = pi/2`` every diagonal entry is exactly 1/3."""
    a = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * cross @ cross


def _top_vectors(k: np.ndarray, m: int) -> np.ndarray:
    """The solver's top-m eigenvectors, descending, as a raw comparison would use."""
    return np.linalg.eigh(k)[1][:, ::-1][:, :m]


# ------------------------------------------------------------- (a) degenerate top


def test_degenerate_top_is_aligned_by_subspace_not_by_vectors():
    """A triple top eigenvalue (split by 1e-11 lambda_max, below the 1e-6 cluster
    gap) with the eigenvectors of one kernel rotated by 90 degrees inside the
    eigenspace: the subspaces are equal, the i-th eigenvectors are not."""
    n = 8
    v = _basis(n)
    rotated = v.copy()
    rotated[:, :3] = v[:, :3] @ _rotation_about_diagonal(np.pi / 2)
    values = np.array([3, 3, 3, 1.0, 0.5, 0.3, 0.2, 0.1])
    values[:3] += 3e-11 * np.array([1.0, 0.0, -1.0])  # fixes each solver's basis
    k_inf = _with_eigenpairs(v, values)
    k_emp = _with_eigenpairs(rotated, values)

    # raw eigenvector dot products of the two decompositions: about 1/3, not 1
    raw = np.abs(np.sum(_top_vectors(k_emp, 3) * _top_vectors(k_inf, 3), axis=0))
    np.testing.assert_allclose(raw, 1 / 3, atol=1e-3)

    res = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=1)
    assert (res.dim, res.extended, res.split_by) == (3, True, ("k_emp", "k_inf"))
    np.testing.assert_allclose(res.cosines, 1.0, rtol=0, atol=1e-12)
    assert res.max_angle < 1e-12
    assert res.alignment == pytest.approx(1.0, abs=1e-12)
    assert res.cluster_sizes == (3,)


def test_exactly_degenerate_kernel_has_many_valid_bases():
    """The same kernel written with two eigenbases of its exact triple eigenvalue:
    both are eigenbases to round-off, their vectors differ (dot products 1/3), and
    the alignment of the kernel with itself is 1 by subspaces."""
    n = 8
    v = _basis(n, seed=1)
    rotated = v.copy()
    rotated[:, :3] = v[:, :3] @ _rotation_about_diagonal(np.pi / 2)
    values = np.array([2.0, 2.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.125])
    k_a = _with_eigenpairs(v, values)
    k_b = _with_eigenpairs(rotated, values)
    np.testing.assert_allclose(k_a, k_b, rtol=0, atol=1e-14)
    for basis in (v, rotated):
        residual = np.linalg.norm(k_a @ basis[:, :3] - 2.0 * basis[:, :3])
        assert residual < 1e-14
    np.testing.assert_allclose(np.sum(v[:, :3] * rotated[:, :3], axis=0), 1 / 3)

    res = nx.analysis.eigenspace_alignment(k_b, k_a, k=2)
    assert res.dim == 3 and res.max_angle < 1e-12


# ------------------------------------------------------------- (b) split cluster


def _pair_with_cluster(delta: float, dtype=np.float64):
    """k_emp with eigenvalues 5, 2 + delta, 2, 2 - delta, 1, 0.5; k_inf with the
    same eigenvectors and well separated eigenvalues."""
    v = _basis(6, seed=2)
    k_emp = _with_eigenpairs(v, [5.0, 2.0 + delta, 2.0, 2.0 - delta, 1.0, 0.5])
    k_inf = _with_eigenpairs(v, [5.0, 3.0, 2.0, 1.5, 1.0, 0.5])
    return k_emp.astype(dtype), k_inf


def test_cut_inside_a_cluster_is_extended():
    k_emp, k_inf = _pair_with_cluster(delta=5e-7)  # gap 1e-7 lambda_max < 1e-6
    res = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=2)
    assert (res.k, res.dim, res.extended, res.split_by) == (2, 4, True, ("k_emp",))
    assert res.note.startswith("the cut at k=2 splits a cluster of k_emp")
    assert "extended to dim=4" in res.note
    assert res.cluster_sizes == (1, 3)
    assert res.gap_tol_emp == pytest.approx(1e-6 * 5.0)
    # same eigenvectors: every cluster is aligned
    np.testing.assert_allclose(res.cluster_overlaps, 1.0, atol=1e-12)
    assert json.loads(json.dumps(res.to_dict()))["cluster_sizes"] == [1, 3]

    # the cluster is also found by the kernel it sits in when the roles swap
    swapped = nx.analysis.eigenspace_alignment(k_inf, k_emp, k=3)
    assert (swapped.dim, swapped.split_by) == (4, ("k_inf",))


def test_gap_above_the_threshold_is_not_a_cluster():
    k_emp, k_inf = _pair_with_cluster(delta=5e-5)  # gap 1e-5 lambda_max > 1e-6
    res = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=2)
    assert (res.dim, res.extended, res.split_by, res.note) == (2, False, (), "")
    assert res.cluster_sizes == (1, 1)
    # a larger documented threshold merges it
    merged = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=2, gap_rtol=1e-4)
    assert merged.dim == 4


def test_float32_input_uses_the_psd_round_off():
    """A gap of 1e-7 lambda_max is resolved in float64 (gap_rtol=0) but is round-off
    for a float32 kernel: N eps32 = 7.2e-7 at N = 6, the tolerance of spectrum()."""
    k64, k_inf = _pair_with_cluster(delta=5e-7)
    assert nx.analysis.eigenspace_alignment(k64, k_inf, k=2, gap_rtol=0.0).dim == 2
    k32, _ = _pair_with_cluster(delta=5e-7, dtype=np.float32)
    res = nx.analysis.eigenspace_alignment(k32, k_inf, k=2, gap_rtol=0.0)
    assert res.dim == 4
    assert res.gap_tol_emp == pytest.approx(6 * np.finfo(np.float32).eps * 5.0, 1e-6)


def test_cluster_past_the_first_block_takes_every_eigenpair():
    """k = 1 on a kernel whose top 30 eigenvalues form one cluster (more than the
    2k + 8 eigenpairs computed first)."""
    n = 40
    v = _basis(n, seed=3)
    values = np.r_[np.full(30, 4.0) + 1e-9 * np.arange(30), np.linspace(2, 1, 10)]
    k_emp = _with_eigenpairs(v, values)
    res = nx.analysis.eigenspace_alignment(k_emp, k_emp, k=1)
    assert res.dim == 30 and res.alignment == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------- (c) known angle


@pytest.mark.parametrize("theta", [1e-8, 1e-4, 0.3, 1.2, np.pi / 2])
def test_rotation_out_of_the_subspace_gives_its_angle(theta):
    """k_emp = G k_inf G^T with G the rotation by theta in the plane of the top
    eigenvector and the 6th: the top-2 spaces meet at principal angles (theta, 0)."""
    n = 8
    v = _basis(n, seed=4)
    g = np.eye(n)
    g[np.ix_([0, 5], [0, 5])] = [[np.cos(theta), -np.sin(theta)],
                                 [np.sin(theta), np.cos(theta)]]  # fmt: skip
    values = [4.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1]
    k_inf = _with_eigenpairs(v, values)
    k_emp = _with_eigenpairs(v @ g, values)

    res = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=2)
    assert res.dim == 2
    assert res.max_angle == pytest.approx(theta, rel=1e-10, abs=1e-14)
    np.testing.assert_allclose(res.cosines, [1.0, np.cos(theta)], atol=1e-14)
    assert res.alignment == pytest.approx((1 + np.cos(theta) ** 2) / 2, abs=1e-14)
    np.testing.assert_allclose(
        res.cluster_overlaps, [np.cos(theta) ** 2, 1.0], atol=1e-14
    )


# ------------------------------------------------------------- (d) random pairs


def _random_symmetric(rng, n: int) -> np.ndarray:
    a = rng.standard_normal((n, n))
    return (a + a.T) / 2


def test_random_pairs_are_bounded_and_invariant_under_similarity():
    """40 random symmetric pairs (N = 5..16, k = 1..N): cosines in [0, 1], and the
    same result for (Q A Q^T, Q B Q^T) with a random orthogonal Q."""
    rng = np.random.default_rng(5)
    for trial in range(40):
        n = int(rng.integers(5, 17))
        k = int(rng.integers(1, n + 1))
        a, b = _random_symmetric(rng, n), _random_symmetric(rng, n)
        q = np.linalg.qr(rng.standard_normal((n, n)))[0]
        res = nx.analysis.eigenspace_alignment(a, b, k=k)
        moved = nx.analysis.eigenspace_alignment(q @ a @ q.T, q @ b @ q.T, k=k)
        where = f"{trial=} {n=} {k=}"
        assert res.cosines.shape == (res.dim,), where
        assert np.all((res.cosines >= 0) & (res.cosines <= 1)), where
        assert 0 <= res.alignment <= 1 and 0 <= res.max_angle <= np.pi / 2, where
        assert (moved.dim, moved.cluster_sizes) == (res.dim, res.cluster_sizes), where
        np.testing.assert_allclose(
            moved.cosines, res.cosines, atol=1e-10, err_msg=where
        )
        assert moved.max_angle == pytest.approx(res.max_angle, abs=1e-8), where
        # the top-N spaces are the whole space
        if k == n:
            np.testing.assert_allclose(res.cosines, 1.0, atol=1e-12, err_msg=where)


def test_angles_agree_with_scipy_on_the_dense_eigenvectors():
    """The float64 reference computed another way: full eigh by numpy, then
    scipy.linalg.subspace_angles of the top-k columns."""
    rng = np.random.default_rng(6)
    a, b = _random_symmetric(rng, 30), _random_symmetric(rng, 30)
    for k in (1, 4, 12):
        res = nx.analysis.eigenspace_alignment(a, b, k=k)
        ref = scipy.linalg.subspace_angles(_top_vectors(a, k), _top_vectors(b, k))
        np.testing.assert_allclose(np.sort(np.cos(ref))[::-1], res.cosines, atol=1e-12)
        assert res.max_angle == pytest.approx(ref[0], abs=1e-12)


# ------------------------------------------------------------- input errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, r"^k=0 is not allowed; must be an integer in \[1, N=4\]$"),
        ({"k": 5}, r"^k=5 is not allowed; must be an integer in \[1, N=4\]$"),
        ({"k": 2.0}, r"^k=2\.0 is not allowed; must be an integer"),
        ({"k": True}, r"^k=True is not allowed"),
        (
            {"k": 1, "gap_rtol": -1e-3},
            r"^gap_rtol=-0\.001 is not allowed; must be a finite number in \[0, 1\)$",
        ),
        ({"k": 1, "gap_rtol": float("nan")}, r"^gap_rtol=nan is not allowed"),
    ],
)
def test_bad_arguments_are_one_named_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        nx.analysis.eigenspace_alignment(np.eye(4), np.eye(4), **kwargs)


def test_bad_kernels_are_one_named_line():
    with pytest.raises(ValueError, match=r"^k_emp and k_inf must have the same shape"):
        nx.analysis.eigenspace_alignment(np.eye(4), np.eye(3), k=1)
    bad = np.eye(3)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match=r"^k_inf has 1 non-finite entries"):
        nx.analysis.eigenspace_alignment(np.eye(3), bad, k=1)


# ------------------------------------------------------------- the app


def test_app_metrics_come_from_one_call():
    """The per-run fields: top-1 is the first cluster of the top-k result."""
    k_emp, k_inf = _pair_with_cluster(delta=5e-7)
    out = _eig_align_metrics(k_emp, k_inf, 1)
    # the top eigenvalue (5) is alone; k = 1 is not extended
    assert (out["eig_align_top1_dim"], out["eig_align_topk_dim"]) == (1, 1)
    out = _eig_align_metrics(k_emp, k_inf, 2)
    ref = nx.analysis.eigenspace_alignment(k_emp, k_inf, k=2)
    assert out == {
        "eig_align_top1": ref.cluster_overlaps[0],
        "eig_align_top1_dim": 1,
        "eig_align_topk": ref.alignment,
        "eig_align_topk_dim": 4,
        "eig_align_topk_max_angle": ref.max_angle,
    }


def _compose(overrides):
    with initialize_config_dir(config_dir=str(find_conf_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def test_eig_align_k_is_validated():
    assert _compose([]).analysis.eig_align_k == 5
    with pytest.raises(
        ValueError,
        match=r"^analysis\.eig_align_k=0 is not allowed; must be an integer >= 1$",
    ):
        validate(_compose(["analysis.eig_align_k=0"]))
    with pytest.raises(
        ValueError,
        match=r"^analysis\.eig_align_k=13 is not allowed; must be an integer in "
        r"\[1, data\.n=12\] \(the kernels are N x N\)$",
    ):
        validate(_compose(["analysis.eig_align_k=13", "data.n=12"]))


def test_app_run_records_the_alignment_of_its_kernels():
    """A tiny point computed in-process: the stored fields equal the alignment of
    K_emp and K_inf recomputed outside the app."""
    import jax

    from nthexp.experiment._task import compute_point
    from nthexp.experiment._validate import build_model

    cfg = _compose(
        ["data.n=12", "model.width=8", "model.depth=1", "analysis.eig_align_k=3"]
        + ["logger=none"]
    )
    validate(cfg)
    metrics, _ = compute_point(cfg)

    x = nx.data.load(cfg.data.name, 12, seed=cfg.data.seed).x
    model = build_model(cfg)
    params = nx.models.init(model, jax.random.key(cfg.seed), x.shape[1])
    k_emp = nx.kernels.ntk(model, params, x)
    ref = nx.analysis.eigenspace_alignment(
        k_emp, nx.kernels.infinite_ntk(model, x), k=3
    )
    assert metrics["eig_align_topk_dim"] == ref.dim >= 3
    assert metrics["eig_align_top1_dim"] == ref.cluster_sizes[0]
    assert metrics["eig_align_topk"] == pytest.approx(ref.alignment, rel=1e-9)
    assert metrics["eig_align_top1"] == pytest.approx(ref.cluster_overlaps[0], rel=1e-9)
    assert metrics["eig_align_topk_max_angle"] == pytest.approx(ref.max_angle, rel=1e-9)
    assert 0 < metrics["eig_align_topk"] < 1
