"""Summaries the few-shot literature reports: mean and 95% confidence interval over tasks."""

from __future__ import annotations

from typing import Any

import numpy as np


def mean_ci95(values: Any) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% confidence interval (1.96 s.e.)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("mean_ci95 needs at least one value, got an empty array")
    if values.size == 1:
        return float(values[0]), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(values.size))


def format_mean_ci(mean: float, ci: float, digits: int = 3) -> str:
    """``"0.512 ± 0.034"``."""
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = [
        "| " + " | ".join(map(str, header)) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: list[str], rows: list[list[Any]]) -> str:
    """The same table as CSV."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
