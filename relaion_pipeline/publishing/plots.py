"""Pictures that say more than numbers: a shard's punsafe distribution with both thresholds, and removals per
shard across a release. Rendered to PNG (matplotlib, no display needed); never from URLs or captions."""

from __future__ import annotations

import io

import duckdb

from relaion_pipeline.core import storage
from relaion_pipeline.core.schemas import quote
from relaion_pipeline.core.settings import Settings

BINS = 50


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _legend_outside(axes) -> None:
    """The legend to the right of the axes, where it cannot cover a bar (the PNG's tight bounding box takes it in)."""
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)


def score_histogram(shard_path: str, column: str) -> list[tuple[float, int]]:
    """Counts of `column` per bin of width 1/BINS over [0, 1] (out-of-range values clamp to the ends)."""
    con = duckdb.connect()
    storage.register(con, shard_path)
    try:
        rows = con.execute(
            f"SELECT least(greatest(floor({quote(column)} * {BINS}), 0), {BINS - 1}) AS bin, count(*) "
            f"FROM read_parquet({storage.duckdb_path(shard_path)}) WHERE {quote(column)} IS NOT NULL GROUP BY 1 ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    return [(int(b) / BINS, n) for b, n in rows]


def punsafe_plot(name: str, histogram: list[tuple[float, int]], settings: Settings) -> bytes:
    """The shard's punsafe distribution (log scale) with the research and safe thresholds marked."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.2))
    axes.bar([b for b, _ in histogram], [n for _, n in histogram], width=1 / BINS, align="edge", color="#4c78a8")
    axes.set_yscale("log")
    for value, label, color in (
        (settings.safe_threshold, f"research-safe drops > {settings.safe_threshold}", "#f58518"),
        (settings.research_threshold, f"keyword rule > {settings.research_threshold}", "#e45756"),
    ):
        axes.axvline(value, color=color, linestyle="--", label=label)
    axes.set_xlim(0, 1)
    axes.set_xlabel("punsafe")
    axes.set_ylabel("rows")
    axes.set_title(f"{name}: punsafe distribution")
    _legend_outside(axes)
    data = _png(figure)
    plt.close(figure)
    return data


def removals_figure(per_shard: dict[str, dict]):
    """Rows removed from research and dropped from research-safe, per shard, as stacked bars (a matplotlib
    figure: close it with `pyplot.close`)."""
    plt = _pyplot()
    names = list(per_shard)
    removed = [per_shard[n]["rows_removed"] for n in names]
    unsafe = [per_shard[n]["rows_dropped_unsafe"] for n in names]
    figure, axes = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 3.5))
    axes.bar(names, removed, color="#e45756", label="removed (lists, keyword rule)")
    axes.bar(names, unsafe, bottom=removed, color="#f58518", label="dropped from research-safe (punsafe)")
    axes.set_ylabel("rows")
    axes.set_title("Removals per shard")
    axes.tick_params(axis="x", rotation=60, labelsize=7)
    _legend_outside(axes)
    return figure


def removals_plot(per_shard: dict[str, dict]) -> bytes:
    """`removals_figure` as PNG."""
    figure = removals_figure(per_shard)
    data = _png(figure)
    _pyplot().close(figure)
    return data
