"""Reports built from the results store: the leaderboard (Markdown, HTML) and its figure registry.

Importing the package registers the built-in figures through the same `register_figure` hook a user's own
plot uses.
"""

from harness.reports import analysis_plots  # noqa: F401  (registers the analysis figures)
from harness.reports.leaderboard import write_leaderboard
from harness.reports.plots import FIGURES, display_name, register_figure

__all__ = ["FIGURES", "display_name", "register_figure", "write_leaderboard"]
