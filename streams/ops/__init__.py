"""Operations: what an operator sees of a running processor. The monitor turns batch reports into
Prometheus metrics (``monitor``, ``metrics``), health states (``health``), the ``/health``,
``/metrics`` and ``/models`` endpoints (``http``), log set-up (``logs``) and the live forecast
accuracy (``accuracy``).
"""
