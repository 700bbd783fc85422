"""The release's pictures show every bar: no legend lies over the data it explains."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from relaion_pipeline.publishing import plots  # noqa: E402


@pytest.mark.parametrize("shards", [3, 12, 40])
def test_the_removals_legend_covers_no_bar(shards):
    """Bars that fill the axes everywhere (the tallest right under where a legend goes by default, in the top
    corners): wherever inside the axes the legend sat, it would hide one."""
    per_shard = {
        f"family/part-{i:05d}": {"rows_removed": 900 + 10 * (i % 3), "rows_dropped_unsafe": 100 + 5 * (i % 2)}
        for i in range(shards)
    }
    figure = plots.removals_figure(per_shard)
    try:
        renderer = figure.canvas.get_renderer()
        figure.canvas.draw()
        (axes,) = figure.axes
        legend = axes.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == [
            "removed (lists, keyword rule)",
            "dropped from research-safe (punsafe)",
        ]
        box = legend.get_window_extent(renderer)
        bars = [bar for container in axes.containers for bar in container]
        assert len(bars) == 2 * shards
        covered = [bar.get_x() for bar in bars if box.overlaps(bar.get_window_extent(renderer))]
        assert not covered, f"the legend covers {len(covered)} bars"
        saved = figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans).padded(0.5)  # what the PNG holds
        assert saved.x0 <= box.x0 and box.x1 <= saved.x1 and saved.y0 <= box.y0 and box.y1 <= saved.y1
    finally:
        plt.close(figure)
