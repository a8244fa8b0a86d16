"""``matteserve loadtest`` and ``matteserve bench``: measure the service the way an SRE would.

- :mod:`.runner` drives a target in closed loop (fixed concurrency) or open loop (scheduled arrivals,
  latency measured from each request's intended send time);
- :mod:`.targets` are what it drives: Triton's ensemble directly, or the gateway through the client;
- :mod:`.triton_metrics` scrapes Triton's counters before and after each run to say where time went;
- :mod:`.report` prints and writes the results; :mod:`.perf_analyzer` cross-checks against Triton's
  own load generator; :mod:`.bench` compares matteserve with the model's ceiling and with rembg;
- :mod:`.bench_cli` is ``matteserve bench``, with ``bench gateway`` (the gateway's overhead over
  Triton), ``bench gpu`` (:mod:`.gpu_bench`: the uint8 fold, the FP16 gate, engine images/s),
  ``bench codecs`` (:mod:`.codecs`) and ``bench hostile`` (:mod:`.hostile_bench`);
- :mod:`.prometheus` is the one reader of Triton's and the gateway's /metrics text;
- :mod:`.hostile` builds the hostile PNGs the tests and ``bench hostile`` send.
"""
