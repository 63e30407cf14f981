"""Array kernels of gpu-margin: pricing, implied volatility, scenario grids, segment reductions.

Pure functions on arrays. Each is written once against the array namespace of
its inputs (NumPy, CuPy, or the strict Array API namespace in tests), in
float64; none names a backend, reads a file or touches pandas.
"""

from .american import american_boundary, american_price
from .black_scholes import bsm_delta, bsm_gamma, bsm_price, bsm_vega
from .futures import forward_price
from .grid import price_grid
from .implied_vol import implied_vol
from .normal import norm_cdf, norm_pdf
from .segments import segment_sum

__all__ = [
    "american_boundary",
    "american_price",
    "bsm_delta",
    "bsm_gamma",
    "bsm_price",
    "bsm_vega",
    "forward_price",
    "implied_vol",
    "norm_cdf",
    "norm_pdf",
    "price_grid",
    "segment_sum",
]
