"""Operations: what an operator sees of a running processor. The monitor turns batch reports
(``report``) into Prometheus metrics (``monitor``, ``metrics``) and health states (``health``);
``http`` serves ``/health``, ``/metrics`` and ``/models``; ``logs`` sets up logging and
``accuracy`` tracks live forecast accuracy. The runtime imports this room and reports to it;
nothing here imports ``streams.runtime``.
"""
