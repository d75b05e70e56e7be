"""The runtime: the native Kafka loop (``runner``), how settings become sinks (``wiring``), the
multi-process supervisor (``workers``), the faust-streaming engine (``faust_engine``) and the
crash-injection points used by the recovery tests (``failpoints``). It drives the partition state
in ``streams.state`` and reports to ``streams.ops``; nothing in ``streams.ops`` imports it.
"""
