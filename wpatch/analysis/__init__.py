"""A run's analysis, from its rows alone: the numbers (`tables`), figures (`figures`), report.md (`report`), the
console lines (`console`), TensorBoard (`tensorboard`), all written by `summary.analyse`; two runs compared
(`compare`), runs of different depth at relative depth (`depth`); phonetic-feature cells (`features`) and
bootstrap intervals (`stats`).

What a notebook needs is here: `read_rows`, `read_matrix`, `plot_matrix`, `compare_runs`, `depth_profiles`,
`depth_figure`, `model_card`, `analyse` (a whole run read back: `wpatch.load_run`).
"""

from wpatch.analysis.compare import compare_runs
from wpatch.analysis.depth import depth_figure, depth_profiles, model_card
from wpatch.analysis.figures import plot_matrix
from wpatch.analysis.summary import analyse
from wpatch.analysis.tables import read_matrix, read_rows

__all__ = [
    "analyse",
    "compare_runs",
    "depth_figure",
    "depth_profiles",
    "model_card",
    "plot_matrix",
    "read_matrix",
    "read_rows",
]
