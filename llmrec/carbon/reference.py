"""Reference sets of product carbon footprints (PCF): load, validate, normalise to kg CO2e.

A reference set is any CSV with a product name, an optional description, a category, an optional
company and a PCF value (plus optionally a unit column). Known layouts are recognised from their
header: The Carbon Catalogue (Meinrenken et al. 2022, ``carbon_catalogue_product_level.csv``), its
flattened DataCamp copy (``product_emissions.csv``, ``;``-separated) and Boavizta's IT-equipment
footprints. Any other CSV works with a :class:`ColumnMap` (or the ``--columns`` flag of the CLI).

Rows are numbered from 1 (the first data row after the header) in error messages.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.errors import DataError, LlmrecError

# Factors to kg CO2e. "mt" is left out on purpose: it means megatonne or metric ton depending on who writes it.
UNIT_TO_KG = {
    "mg": 1e-6, "milligram": 1e-6, "milligrams": 1e-6,
    "g": 1e-3, "gram": 1e-3, "grams": 1e-3, "gr": 1e-3,
    "kg": 1.0, "kgs": 1.0, "kilogram": 1.0, "kilograms": 1.0, "kilo": 1.0, "kilos": 1.0,
    "t": 1e3, "ton": 1e3, "tons": 1e3, "tonne": 1e3, "tonnes": 1e3, "metricton": 1e3, "metrictons": 1e3,
    "metrictonne": 1e3, "metrictonnes": 1e3,
    "kt": 1e6, "kilotonne": 1e6, "kilotonnes": 1e6,
    "lb": 0.45359237, "lbs": 0.45359237, "pound": 0.45359237, "pounds": 0.45359237,
}

# Text some sources put in an empty description field (the Carbon Catalogue uses the first two).
PLACEHOLDERS = {"", "blank", "field not included in 2013 data", "not reported", "n/a", "na", "nan", "none", "-"}

_CO2E = re.compile(r"(of)?co\s*(2|₂)\s*-?\s*(e|eq|equivalents?)?\.?$")


def unit_factor(unit: str) -> float:
    """Factor from ``unit`` to kg CO2e: ``"g CO2e"`` -> 0.001, ``"tCO2e"`` -> 1000, ``"kg"`` -> 1.

    Raises ``ValueError`` for a unit it does not know.
    """
    u = str(unit).strip().lower().replace("_", " ")
    u = _CO2E.sub("", u.replace(" ", ""))
    u = u.rstrip(".").replace("-", "")
    if u not in UNIT_TO_KG:
        raise ValueError(f"unknown unit '{unit}' (known: g, kg, t / tonne, kt, lb, each optionally with CO2e)")
    return UNIT_TO_KG[u]


def to_kg(value: float, unit: str) -> float:
    """``value`` in ``unit`` (g / kg / t ... CO2e) converted to kg CO2e."""
    return float(value) * unit_factor(unit)


@dataclass
class ColumnMap:
    """Which CSV column holds which field. ``unit`` is a column name, or ``pcf_unit`` a fixed unit for all rows."""

    name: str
    pcf: str
    description: str | None = None
    category: str | None = None
    company: str | None = None
    id: str | None = None
    unit: str | None = None
    pcf_unit: str = "kg CO2e"
    sep: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ColumnMap:
        """``"name=Product,pcf=PCF (kg),category=Sector"`` -> ColumnMap (the CLI's ``--columns``)."""
        known = {f.name for f in fields(cls)}
        kw = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, col = part.partition("=")
            if not sep or key.strip() not in known:
                raise LlmrecError(f"--columns: expected KEY=COLUMN with KEY in {sorted(known)}, got '{part}'")
            kw[key.strip()] = col.strip()
        for req in ("name", "pcf"):
            if req not in kw:
                raise LlmrecError(f"--columns: '{req}=COLUMN' is required")
        return cls(**kw)


# Layouts recognised from the header; the first whose required columns are all present wins.
KNOWN_LAYOUTS: dict[str, ColumnMap] = {
    "carbon_catalogue": ColumnMap(
        name="Product name (and functional unit)", description="Product detail", category="*Company's sector",
        company="Company", id="*PCF-ID", pcf="Product's carbon footprint (PCF, kg CO2e)"),
    "datacamp": ColumnMap(name="product_name", category="industry_group", company="company", id="id",
                          pcf="carbon_footprint_pcf", sep=";"),
    "boavizta": ColumnMap(name="name", category="subcategory", company="manufacturer", pcf="gwp_total"),
}

# Column names tried for a generic CSV (case-insensitive), in order.
GENERIC_NAMES = {
    "name": ["name", "product", "product_name", "title"],
    "description": ["description", "product_description", "detail", "details"],
    "category": ["category", "sector", "industry"],
    "company": ["company", "manufacturer", "brand", "group"],
    "id": ["id", "product_id", "item_id"],
    "pcf": ["pcf_kg", "pcf", "pcf_kg_co2e", "carbon_footprint", "co2e", "kg_co2e", "footprint"],
    "unit": ["unit", "pcf_unit"],
}


@dataclass
class ReferenceSet:
    """Products with their PCF in kg CO2e, in file order (``frame`` columns: see ``COLUMNS``)."""

    COLUMNS = ("id", "name", "description", "category", "company", "pcf_kg")

    frame: pd.DataFrame
    source: str = ""
    layout: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def pcf_kg(self) -> np.ndarray:
        return self.frame["pcf_kg"].to_numpy(dtype=np.float64)

    @property
    def log10_pcf(self) -> np.ndarray:
        return np.log10(self.pcf_kg)

    @property
    def companies(self) -> np.ndarray:
        return self.frame["company"].to_numpy()

    def texts(self) -> list[str]:
        """The text each product is embedded and retrieved by."""
        return [product_text(r.name, r.description, r.category) for r in self.frame.itertuples()]

    def subset(self, idx) -> ReferenceSet:
        return ReferenceSet(self.frame.iloc[np.asarray(idx)].reset_index(drop=True), self.source, self.layout)

    def records(self) -> list[dict]:
        return self.frame.to_dict("records")


def product_text(name: str, description: str = "", category: str = "") -> str:
    """``"name. description (category)"``: one string per product for the encoder (same for references and queries)."""
    text = str(name).strip()
    desc = str(description or "").strip()
    if desc and desc.lower() != text.lower():
        text += f". {desc}"
    if category:
        text += f" ({category})"
    return text


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    s = " ".join(str(value).split())
    return "" if s.lower() in PLACEHOLDERS else s


def _sniff_sep(path: Path) -> str:
    with open(path, encoding="utf-8-sig", newline="") as f:
        head = f.readline()
    try:
        return csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_csv(path: str | Path, sep: str | None = None) -> pd.DataFrame:
    """The CSV as strings (nothing parsed yet), with its separator sniffed from the header line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pd.read_csv(path, sep=sep or _sniff_sep(path), dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"not a readable CSV ({' '.join(str(e).split())})", file=str(path)) from e


def detect_columns(header: list[str], *, need_pcf: bool = True) -> tuple[str, ColumnMap]:
    """(layout name, ColumnMap) for a header: a known layout, else generic names (case-insensitive)."""
    cols = set(header)
    for layout, cm in KNOWN_LAYOUTS.items():
        required = [cm.name] + [cm.pcf] * need_pcf
        if all(c in cols for c in required):
            return layout, cm
    lower = {c.strip().lower(): c for c in header}
    found = {}
    for key, names in GENERIC_NAMES.items():
        hit = next((lower[n] for n in names if n in lower), None)
        if hit is not None:
            found[key] = hit
    missing = [k for k in ("name", "pcf")[: 1 + need_pcf] if k not in found]
    if missing:
        wanted = "; ".join(f"{k}: one of {GENERIC_NAMES[k]}" for k in missing)
        raise LlmrecError(f"cannot tell which column holds {', '.join(missing)} ({wanted}); "
                          f"columns are {header}; pass a column map (--columns name=...,pcf=...)")
    found.setdefault("pcf", "")
    return "generic", ColumnMap(**found)


def _column(df: pd.DataFrame, col: str | None, path: Path, key: str) -> list[str]:
    if col is None:
        return [""] * len(df)
    if col not in df.columns:
        raise DataError(f"column '{col}' (for {key}) not in the header {list(df.columns)}", file=str(path), field=col)
    return [_clean(v) for v in df[col]]


def parse_pcf(raw: str, unit: str, *, file: str, row: int, field: str, unit_field: str | None = None) -> float:
    """One PCF cell -> kg CO2e; a missing, non-numeric, non-positive value or unknown unit is a DataError."""
    text = str(raw).strip().replace(",", "") if raw is not None else ""
    if not text:
        raise DataError("missing PCF value", file=file, record=row, field=field)
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"PCF '{raw}' is not a number", file=file, record=row, field=field) from None
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"PCF must be a positive number (log-space estimation), got {raw}", file=file, record=row,
                        field=field)
    try:
        return to_kg(value, unit)
    except ValueError as e:
        raise DataError(str(e), file=file, record=row, field=unit_field or field) from None


def load_reference(path: str | Path, columns: ColumnMap | None = None, *, need_pcf: bool = True) -> ReferenceSet:
    """Loads a reference set (or, with ``need_pcf=False``, items to estimate) from a CSV.

    ``columns`` defaults to the layout detected from the header. Every PCF is converted to kg CO2e
    (``columns.unit`` column per row, or the fixed ``columns.pcf_unit``). A row without a name or
    with a bad PCF raises ``DataError`` naming the file, row (1 = first data row) and column.
    """
    path = Path(path)
    if columns is None:
        sep = _sniff_sep(path) if path.is_file() else None
        df = read_csv(path, sep)
        layout, columns = detect_columns(list(df.columns), need_pcf=need_pcf)
        if columns.sep and columns.sep != sep:
            df = read_csv(path, columns.sep)
    else:
        layout = "custom"
        df = read_csv(path, columns.sep)
    if df.empty:
        raise DataError("no rows", file=str(path))
    names = _column(df, columns.name, path, "name")
    out = {
        "name": names,
        "description": _column(df, columns.description, path, "description"),
        "category": _column(df, columns.category, path, "category"),
        "company": _column(df, columns.company, path, "company"),
        "id": _column(df, columns.id, path, "id"),
    }
    for i, n in enumerate(names):
        if not n:
            raise DataError("empty product name", file=str(path), record=i + 1, field=columns.name)
        if not out["id"][i]:
            out["id"][i] = str(i + 1)
    has_pcf = bool(columns.pcf) and columns.pcf in df.columns
    if need_pcf and not has_pcf:
        raise DataError(f"PCF column '{columns.pcf}' not in the header {list(df.columns)}", file=str(path),
                        field=columns.pcf)
    if has_pcf:
        units = _column(df, columns.unit, path, "unit") if columns.unit else [columns.pcf_unit] * len(df)
        pcf = []
        for i, (raw, unit) in enumerate(zip(df[columns.pcf], units)):
            if not need_pcf and not str(raw).strip():
                pcf.append(float("nan"))
                continue
            pcf.append(parse_pcf(raw, unit or columns.pcf_unit, file=str(path), row=i + 1, field=columns.pcf,
                                 unit_field=columns.unit))
        out["pcf_kg"] = pcf
    else:
        out["pcf_kg"] = [float("nan")] * len(df)
    return ReferenceSet(pd.DataFrame(out, columns=list(ReferenceSet.COLUMNS)), source=str(path), layout=layout)


def load_items(path: str | Path, columns: ColumnMap | None = None) -> ReferenceSet:
    """Products to estimate: a CSV (same column rules, PCF optional) or JSON lines with name/description/category."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return _load_jsonl(path)
    return load_reference(path, columns, need_pcf=False)


def _load_jsonl(path: Path) -> ReferenceSet:
    from llmrec.jsonl import iter_jsonl

    rows = []
    for i, r in iter_jsonl(path):
        if not isinstance(r, dict) or not _clean(r.get("name")):
            raise DataError("each line needs a non-empty 'name'", file=str(path), record=i, field="name")
        pcf = r.get("pcf_kg")
        rows.append({"id": str(r.get("id", i)), "name": _clean(r["name"]),
                     "description": _clean(r.get("description")), "category": _clean(r.get("category")),
                     "company": _clean(r.get("company")),
                     "pcf_kg": float(pcf) if pcf not in (None, "") else float("nan")})
    if not rows:
        raise DataError("no rows", file=str(path))
    return ReferenceSet(pd.DataFrame(rows, columns=list(ReferenceSet.COLUMNS)), source=str(path), layout="jsonl")
