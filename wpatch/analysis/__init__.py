"""A run's analysis, from its rows alone: the numbers (`tables`), figures (`figures`), report.md (`report`), the
console lines (`console`), TensorBoard (`tensorboard`), all written by `summary.analyse`; two runs compared
(`compare`); phonetic-feature cells (`features`) and bootstrap intervals (`stats`).

What a notebook needs is here: `load_run`, `read_rows`, `read_matrix`, `plot_matrix`, `compare_runs`, `analyse`.
"""

from wpatch.analysis.compare import compare_runs
from wpatch.analysis.figures import plot_matrix
from wpatch.analysis.summary import analyse
from wpatch.analysis.tables import load_run, read_matrix, read_rows

__all__ = ["analyse", "compare_runs", "load_run", "plot_matrix", "read_matrix", "read_rows"]
