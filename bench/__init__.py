"""videoqueue's benchmark: ``python -m bench`` (see bench/README.md and bench/results/RESULTS.md).

One module per scenario (in_flight, polling, copy_to_s3, end_to_end, enqueue), the services and
measuring tools they share (harness), the thread-per-job comparison (baseline), the trace the
workers run with (instrumented_worker), and the report (report, model).
"""
