"""The telemetry simulator: its configuration (``config``), signal shapes and injected anomalies
(``signal``), record encoding (``records``), the seeded generator of byte-identical meter and
SCADA records however time is sliced (``generator``), and the Kafka side that produces them
(``producer``, behind ``gridstream simulate``).
"""
