"""``matteserve loadtest`` and ``matteserve bench``: measure the service the way an SRE would.

- :mod:`.runner` drives a target in closed loop (fixed concurrency) or open loop (scheduled arrivals,
  latency measured from each request's intended send time);
- :mod:`.targets` are what it drives: Triton's ensemble directly, or the gateway through the client;
- :mod:`.triton_metrics` scrapes Triton's counters before and after each run to say where time went;
- :mod:`.report` prints and writes the results; :mod:`.perf_analyzer` cross-checks against Triton's
  own load generator; :mod:`.bench` compares matteserve with the model's ceiling and with rembg.
"""
