"""The throughput benchmark behind ``python -m super_recipes.benchmark`` (see :mod:`super_recipes.benchmark`).

* :mod:`~super_recipes.benchmarking.search`: the maximal-batch search (doubling, then bisection).
* :mod:`~super_recipes.benchmarking.memory`: peak memory (CUDA allocator, or resident memory on CPU).
* :mod:`~super_recipes.benchmarking.measure`: timing one model.
* :mod:`~super_recipes.benchmarking.report`: the table and the CSV file.
"""

from super_recipes.benchmarking.measure import BenchmarkResult, BenchmarkSettings, benchmark_model, capped_fits
from super_recipes.benchmarking.report import CSV_COLUMNS, format_table, write_csv
from super_recipes.benchmarking.search import find_max_batch, measure_batch

__all__ = ["CSV_COLUMNS", "BenchmarkResult", "BenchmarkSettings", "benchmark_model", "capped_fits",
           "find_max_batch", "format_table", "measure_batch", "write_csv"]
