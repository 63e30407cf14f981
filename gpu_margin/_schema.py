"""Column names and types of every input table and of the validated positions (SPEC section 3).

The input schemas are the canonical Arrow types a reader casts to; a column
that cannot be cast safely to its type is a fatal :class:`InputFileError`.
``VALID_COLUMNS`` is the contract of :func:`gpu_margin._validate.validate_positions`:
downstream code (pricing, methodologies, outputs) relies on exactly these
names and dtypes, in this order, followed by any extra input columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """One input column: its canonical Arrow type, whether it is required, and a hint for messages.

    ``id_like`` columns also accept integers (cast to strings, losslessly).
    """

    name: str
    type: pa.DataType
    required: bool
    hint: str
    id_like: bool = False


KINDS = ("stock", "option", "future")
RIGHTS = ("C", "P")
STYLES = ("A", "E")
ACCOUNT_TYPES = ("portfolio", "regt")
PRODUCT_GROUPS = ("equity", "broad_index_high_cap", "broad_index", "narrow_index")

DEFAULT_OPTION_MULTIPLIER = 100.0
DEFAULT_STOCK_MULTIPLIER = 1.0
DEFAULT_OPTION_STYLE = "E"
DEFAULT_ACCOUNT_TYPE = "portfolio"
DAYS_PER_YEAR = 365.0

# ---------------------------------------------------------------- positions
POSITION_COLUMNS: tuple[Column, ...] = (
    Column("account_id", pa.string(), True, "string, the account the position belongs to", id_like=True),
    Column("position_id", pa.string(), False, "string, unique per position", id_like=True),
    Column("underlying", pa.string(), True, "string, a key of the market file"),
    Column("kind", pa.string(), True, "string: 'stock', 'option' or 'future'"),
    Column("right", pa.string(), False, "string: 'C' or 'P', required for options"),
    Column("strike", pa.float64(), False, "float64 > 0, required for options"),
    Column("expiry", pa.date32(), False, "date, required for options and futures"),
    Column("style", pa.string(), False, "string: 'A' or 'E'"),
    Column("multiplier", pa.float64(), False, "float64 > 0; 100 for options, 1 for stock"),
    Column("quantity", pa.float64(), True, "float64, signed, negative = short"),
    Column("mark", pa.float64(), False, "float64 >= 0, market price per unit"),
    Column("iv", pa.float64(), False, "float64 > 0, implied volatility, e.g. 0.25"),
)
POSITIONS_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in POSITION_COLUMNS])
# added by the reader: the file a row came from and its 0-based row number in that file
POSITIONS_RESERVED = ("source", "row")

# ---------------------------------------------------------------- market
MARKET_COLUMNS: tuple[Column, ...] = (
    Column("underlying", pa.string(), True, "string, unique key", id_like=True),
    Column("spot", pa.float64(), True, "float64 > 0"),
    Column("vol", pa.float64(), True, "float64 > 0, annualised, e.g. 0.25"),
    Column("dividend_yield", pa.float64(), False, "float64, continuous, default 0"),
    Column("rate", pa.float64(), False, "float64, continuous; empty = the run's rate"),
    Column("product_group", pa.string(), True, "string, e.g. 'equity' or 'broad_index_high_cap'"),
    Column("option_style", pa.string(), False, "string: 'A' or 'E', default 'E'"),
    Column("tracks", pa.string(), False, "string, the index an ETF tracks"),
)
MARKET_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in MARKET_COLUMNS])

# ---------------------------------------------------------------- accounts
ACCOUNT_COLUMNS: tuple[Column, ...] = (
    Column("account_id", pa.string(), True, "string, unique", id_like=True),
    Column("cash", pa.float64(), False, "float64, cash balance, default 0"),
    Column("account_type", pa.string(), False, "string: 'portfolio' or 'regt'"),
)
ACCOUNTS_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in ACCOUNT_COLUMNS])

# ---------------------------------------------------------------- scenarios (SPEC 5.2)
SCENARIOS_SCHEMA = pa.schema(
    [
        pa.field("scenario_id", pa.string()),
        pa.field("underlying", pa.string()),
        pa.field("price_shock", pa.float64()),
        pa.field("vol_shock", pa.float64()),
        pa.field("label", pa.string()),
    ]
)

# ---------------------------------------------------------------- rejects
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("account_id", pa.string()),
        pa.field("position_id", pa.string()),
        pa.field("code", pa.string()),
        pa.field("message", pa.string()),
    ]
)

# Reject codes in the order they are checked: a row gets the first that applies.
REJECT_CODES: tuple[tuple[str, str], ...] = (
    ("account_missing", "account_id is empty"),
    ("unknown_underlying", "underlying is empty or not in the market file"),
    ("bad_kind", "kind is not 'stock', 'option' or 'future'"),
    ("bad_right", "an option's right is not 'C' or 'P'"),
    ("strike_not_positive", "an option's strike is missing, not finite or not > 0"),
    ("expiry_missing", "an option's or future's expiry is missing or outside 1678-2261"),
    ("expired", "expiry is before the as-of date"),
    ("bad_style", "an option's style is given and is not 'A' or 'E'"),
    ("multiplier_not_positive", "multiplier is given and not a finite number > 0, or missing on a future"),
    ("quantity_missing", "quantity is missing, zero or not finite"),
    ("mark_invalid", "mark is given and negative or infinite"),
    ("iv_invalid", "an option's iv is given and not a finite number > 0"),
    ("no_implied_vol", "an option has a mark, no iv, and no volatility reproduces the mark"),
    ("duplicate_position_id", "position_id is shared with another row"),
)
REJECT_CODE_NAMES = tuple(code for code, _ in REJECT_CODES)

# ---------------------------------------------------------------- validated positions
# (name, pandas dtype); "str" is pandas' string dtype, missing values are NaN.
VALID_COLUMNS: tuple[tuple[str, str], ...] = (
    ("source", "str"),
    ("row", "int64"),
    ("account_id", "str"),
    ("position_id", "str"),
    ("underlying", "str"),
    ("kind", "str"),
    ("right", "str"),
    ("is_call", "bool"),
    ("strike", "float64"),
    ("expiry", "datetime64[ns]"),
    ("t", "float64"),
    ("style", "str"),
    ("american", "bool"),
    ("multiplier", "float64"),
    ("quantity", "float64"),
    ("mark", "float64"),
    ("iv", "float64"),
    ("spot", "float64"),
    ("dividend_yield", "float64"),
    ("rate", "float64"),
    ("product_group", "str"),
    ("tracks", "str"),
    ("vol_market", "float64"),
    ("vol", "float64"),
    ("vol_source", "str"),
)
VALID_COLUMN_NAMES = tuple(name for name, _ in VALID_COLUMNS)
VOL_SOURCES = ("iv", "implied", "market")
