"""Input data sets scaled to |x|^2 = D_in: Gaussian on the sphere, torus, digits."""

from nthexp.data._datasets import NAMES, Dataset, check_rows, load

__all__ = ["NAMES", "Dataset", "check_rows", "load"]
