"""Local tools around the processor: the no-set-up demo (``demo``), the embedded Kafka-compatible
broker used by the demo and the tests (``broker``), and the backtest that runs the processor's
code path over a CSV or Parquet file (``backtest``).
"""
