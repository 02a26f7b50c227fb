r"""The three input sets: Gaussian on the sphere, a flat torus, and scikit-learn digits.

Every data set is returned with each row scaled to :math:`|x|^2 = D_{in}`, so that the
input kernel :math:`S_0 = x \cdot x' / D_{in}` has unit diagonal.

Randomness: ``seed`` seeds one :class:`numpy.random.SeedSequence`, which is spawned into
two independent child streams, the first for the inputs (or the digits subset), the
second for the teacher vector ``u`` of the synthetic targets. Changing ``n`` therefore
never changes ``u``, and the inputs of one seed never share a stream with its teacher.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np

NAMES = ("gaussian", "torus", "digits")

# The size of scikit-learn's bundled copy of the UCI optical digits test set.
DIGITS_SIZE = 1797
DIGITS_D_IN = 64

SYNTHETIC_TARGET_RULE = (
    "y = tanh(u . x / sqrt(D_in)), u ~ N(0, I_{D_in}) drawn from the second child of "
    "numpy.random.SeedSequence(data.seed).spawn(2)"
)
DIGITS_TARGET_RULE = "y = +1 for even digits, -1 for odd digits"


@dataclass(frozen=True)
class Dataset:
    """Inputs and scalar targets of one data set.

    Attributes:
        x: ``(N, D_in)`` float64 inputs, every row with ``|x|^2 = D_in``.
        y: ``(N,)`` float64 targets.
        name: one of :data:`NAMES`.
        info: JSON-serialisable description: ``name``, ``n``, ``d_in``, ``seed``,
            ``target_rule``, ``source``, ``input_rule``.
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    info: dict[str, Any] = field(default_factory=dict)


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_args(name: str, n: int, d_in: int | None, seed: int) -> None:
    """Raise a one-line ``ValueError`` for any argument outside its allowed range."""
    if name not in NAMES:
        raise ValueError(f"data.name={name!r} is not allowed; must be one of {NAMES}")
    if not _is_int(n) or n < 2:
        raise ValueError(f"data.n={n!r} is not allowed; must be an integer >= 2")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"data.seed={seed!r} is not allowed; must be an integer >= 0")

    if name == "digits":
        if d_in is not None and d_in != DIGITS_D_IN:
            raise ValueError(
                f"data.d_in={d_in!r} is not allowed for data.name='digits'; must be "
                f"None or {DIGITS_D_IN} (8x8 images)"
            )
        if n > DIGITS_SIZE:
            raise ValueError(
                f"data.n={n} is not allowed for data.name='digits'; the data set has "
                f"{DIGITS_SIZE} samples, so n must be <= {DIGITS_SIZE}"
            )
        return

    if d_in is None:
        raise ValueError(
            f"data.d_in=None is not allowed for data.name={name!r}; must be an "
            "integer >= 1" + (" and even" if name == "torus" else "")
        )
    if not _is_int(d_in) or d_in < 1:
        raise ValueError(f"data.d_in={d_in!r} is not allowed; must be an integer >= 1")
    if name == "torus" and d_in % 2 != 0:
        raise ValueError(
            f"data.d_in={d_in} is not allowed for data.name='torus'; must be an even "
            "integer >= 2 (two coordinates, cos and sin, per angle)"
        )


def _to_sphere(x: np.ndarray) -> np.ndarray:
    """Rescale each row of ``x`` ``(N, D)`` to ``|x|^2 = D``."""
    d_in = x.shape[1]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x * (np.sqrt(d_in) / norms)


def check_rows(x: np.ndarray, name: str) -> None:
    """Check the inputs ``x`` ``(N, D_in)`` of data set ``name``.

    Raises ``ValueError`` naming the first non-finite row; warns (``UserWarning``)
    naming the duplicated rows, whose kernel rows are equal and make the NTK singular.
    """
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"data.name={name!r}: x of shape {x.shape} is not allowed; must be a "
            "non-empty (N, D_in) array"
        )
    finite = np.all(np.isfinite(x), axis=1)
    if not np.all(finite):
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"data.name={name!r}: row {int(bad[0])} of x is not finite "
            f"({bad.size} non-finite rows in all); the rows must be finite and nonzero "
            "before rescaling to |x|^2 = D_in"
        )

    _, first, inverse, counts = np.unique(
        x, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    if np.any(counts > 1):
        inverse = np.asarray(inverse).reshape(-1)
        dup = np.flatnonzero(counts[inverse] > 1)
        dup = dup[dup != first[inverse[dup]]]
        shown = ", ".join(
            f"{int(r)} (= row {int(first[inverse[r]])})" for r in dup[:10]
        )
        more = f" and {dup.size - 10} more" if dup.size > 10 else ""
        warnings.warn(
            f"data.name={name!r}: {dup.size} duplicated rows in x: {shown}{more}; "
            "duplicated inputs make the kernel matrix singular",
            stacklevel=2,
        )


def _teacher(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Targets ``y = tanh(u . x / sqrt(D_in))`` ``(N,)`` with ``u ~ N(0, I)``."""
    d_in = x.shape[1]
    u = rng.standard_normal(d_in)
    return np.tanh(x @ u / np.sqrt(d_in))


def _gaussian(n: int, d_in: int, rng: np.random.Generator) -> np.ndarray:
    return _to_sphere(rng.standard_normal((n, d_in)))


def _torus(n: int, d_in: int, rng: np.random.Generator) -> np.ndarray:
    # Columns interleave (cos t_1, sin t_1, cos t_2, sin t_2, ...); the raw norm is
    # sqrt(k) for every row, so the rescale is the constant sqrt(2).
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(n, d_in // 2))
    x = np.stack([np.cos(angles), np.sin(angles)], axis=-1).reshape(n, d_in)
    return _to_sphere(x)


def _digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.data, dtype=np.float64)
    labels = np.asarray(bunch.target)

    # Centre with the mean of all 1797 images, so the preprocessing of a point does
    # not depend on which other points were drawn.
    centred = images - images.mean(axis=0)
    rows = rng.choice(images.shape[0], size=n, replace=False)
    x = _to_sphere(centred[rows])
    y = np.where(labels[rows] % 2 == 0, 1.0, -1.0)
    return x, y


def load(name: str, n: int, *, d_in: int | None = None, seed: int = 0) -> Dataset:
    r"""Load ``n`` points of data set ``name``, rows scaled to :math:`|x|^2 = D_{in}`.

    Args:
        name: ``"gaussian"``: :math:`x \sim N(0, I_{D_{in}})` rescaled to the sphere of
            radius :math:`\sqrt{D_{in}}` (uniform on it). ``"torus"``: :math:`k =
            D_{in}/2` angles uniform on :math:`[0, 2\pi)`, embedded as
            :math:`(\cos t_1, \sin t_1, \cos t_2, \sin t_2, \dots)` and rescaled.
            ``"digits"``: scikit-learn's bundled 8x8 digits (1797 images, no download),
            ``n`` drawn without replacement, flattened, centred by the mean image of the
            whole set, rescaled.
        n: number of points, an integer >= 2 (<= 1797 for digits).
        d_in: input dimension; required for gaussian (>= 1) and torus (even, >= 2);
            ``None`` or 64 for digits.
        seed: seeds ``numpy.random.SeedSequence(seed)``, spawned into two streams: the
            first draws the inputs (digits: the subset), the second the teacher ``u``.

    Returns:
        A :class:`Dataset` with ``x`` ``(N, D_in)`` and ``y`` ``(N,)``, both float64.
        Synthetic targets (gaussian, torus) come from a random teacher,
        :math:`y = \tanh(u \cdot x / \sqrt{D_{in}})`, :math:`u \sim N(0, I)`; digits
        targets are +1 for even digits and -1 for odd ones.

    Raises:
        ValueError: one line naming the field, its value and the allowed values.
    """
    _check_args(name, n, d_in, seed)
    x_stream, u_stream = np.random.SeedSequence(seed).spawn(2)
    rng_x = np.random.default_rng(x_stream)

    if name == "digits":
        x, y = _digits(n, rng_x)
        target_rule = DIGITS_TARGET_RULE
        source = "sklearn.datasets.load_digits (bundled, 1797 8x8 images)"
        input_rule = (
            "subset drawn without replacement; flattened; centred by the mean image of "
            "all 1797; rows rescaled to |x|^2 = D_in"
        )
    else:
        if name == "gaussian":
            x = _gaussian(n, d_in, rng_x)
            input_rule = "x ~ N(0, I), rows rescaled to |x|^2 = D_in"
        else:
            x = _torus(n, d_in, rng_x)
            input_rule = (
                "D_in/2 angles uniform on [0, 2pi), embedded as (cos t1, sin t1, ...), "
                "rows rescaled to |x|^2 = D_in"
            )
        y = _teacher(x, np.random.default_rng(u_stream))
        target_rule = SYNTHETIC_TARGET_RULE
        source = "synthetic (numpy.random.default_rng)"

    check_rows(x, name)
    info = {
        "name": name,
        "n": int(n),
        "d_in": int(x.shape[1]),
        "seed": int(seed),
        "target_rule": target_rule,
        "input_rule": input_rule,
        "source": source,
    }
    return Dataset(x=x, y=y.astype(np.float64), name=name, info=info)
