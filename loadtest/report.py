"""A load test's results: terminal tables, JSON, CSV and a latency-versus-throughput plot."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from matteserve.loadtest.gateway_metrics import GatewayBreakdown
from matteserve.loadtest.stats import RunSummary
from matteserve.loadtest.triton_metrics import ModelBreakdown

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrossCheck:
    """perf_analyzer's throughput at the same concurrency against the same server, run right after."""

    concurrency: int
    loadtest_rps: float
    perf_analyzer_rps: float
    loadtest_p50_ms: float
    perf_analyzer_p50_ms: float
    tolerance: float = 0.10

    @property
    def difference(self) -> float:
        """Relative to the larger of the two, so it is symmetric."""
        return _relative_difference(self.loadtest_rps, self.perf_analyzer_rps)

    @property
    def agrees(self) -> bool:
        return self.difference <= self.tolerance

    @property
    def explanation(self) -> str:
        if self.agrees:
            return "the two tools agree"
        if _relative_difference(self.loadtest_p50_ms, self.perf_analyzer_p50_ms) <= self.tolerance:
            return (
                "the medians agree, so the requests cost the same to both tools: the throughputs part in the tail, "
                "i.e. something else took the CPU during one of the runs; rerun with the machine quiet"
            )
        return (
            "the medians differ too: the server was not in the same state for both runs (other load, a cold "
            "cache) or the runs were too short for a stable figure; rerun longer with the machine quiet"
        )


def _relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(a, b, 1e-9)


@dataclass
class RunRecord:
    summary: RunSummary
    triton: list[ModelBreakdown] = field(default_factory=list)
    cross_check: CrossCheck | None = None
    gateway: GatewayBreakdown | None = None

    @property
    def label(self) -> str:
        s = self.summary
        return f"c={int(s.load)}" if s.mode == "closed" else f"{s.load:g}/s"


@dataclass
class LoadTestReport:
    target: str
    inputs: str
    output_format: str
    settings: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def record(r: RunRecord) -> dict[str, Any]:
            out = dataclasses.asdict(r)
            if r.cross_check is not None:
                out["cross_check"] |= {
                    "difference": r.cross_check.difference,
                    "agrees": r.cross_check.agrees,
                    "explanation": r.cross_check.explanation,
                }
            return out

        return {
            "target": self.target,
            "inputs": self.inputs,
            "output_format": self.output_format,
            "settings": self.settings,
            "runs": [record(r) for r in self.runs],
        }

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per run: the CSV."""
        out = []
        for r in self.runs:
            s = r.summary
            row: dict[str, Any] = {
                "mode": s.mode,
                "load": s.load,
                "sent": s.sent,
                "ok": s.ok,
                "errors": sum(s.errors.values()),
                "errors_by_code": ";".join(f"{code}={n}" for code, n in s.errors.items()),
                "warmup_sent": s.warmup_sent,
                "window_s": round(s.window_s, 3),
                "throughput_rps": round(s.throughput_rps, 3),
            }
            row |= {f"{k}": round(v, 3) for k, v in dataclasses.asdict(s.latency).items() if k != "count"}
            row |= {
                "rejected": s.rejected,
                "rejected_p50_ms": round(s.rejection_latency.p50_ms, 3),
                "rejected_p99_ms": round(s.rejection_latency.p99_ms, 3),
            }
            row |= {"send_lag_mean_ms": round(s.send_lag_mean_ms, 3), "send_lag_max_ms": round(s.send_lag_max_ms, 3)}
            for m in r.triton:
                row |= {
                    f"{m.model}_avg_batch": round(m.avg_batch, 3),
                    f"{m.model}_queue_ms": round(m.queue_ms, 3),
                    f"{m.model}_compute_infer_ms": round(m.compute_infer_ms, 3),
                }
            if r.gateway is not None:
                row |= {
                    "gateway_request_ms": round(r.gateway.request_ms, 3),
                    "gateway_triton_ms": round(r.gateway.triton_ms, 3),
                    "gateway_own_ms": round(r.gateway.own_ms, 3),
                }
            if r.cross_check is not None:
                row |= {
                    "perf_analyzer_rps": round(r.cross_check.perf_analyzer_rps, 3),
                    "perf_analyzer_agrees": r.cross_check.agrees,
                }
            out.append(row)
        return out

    def write_json(self, path: Path) -> Path:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def write_csv(self, path: Path) -> Path:
        rows = self.rows()
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def write_plot(self, path: Path) -> Path:
        """Latency percentiles against throughput, one point per run of the sweep."""
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
        modes = sorted({r.summary.mode for r in self.runs})
        for mode, colour in zip(modes, ("tab:blue", "tab:red"), strict=False):
            runs = sorted((r for r in self.runs if r.summary.mode == mode), key=lambda r: r.summary.load)
            x = [r.summary.throughput_rps for r in runs]
            for pct, attr, style in (("p50", "p50_ms", "o-"), ("p90", "p90_ms", "s--"), ("p99", "p99_ms", "^:")):
                y = [getattr(r.summary.latency, attr) for r in runs]
                ax.plot(x, y, style, color=colour, label=f"{mode} loop {pct}", alpha=0.9)
            for r, xi in zip(runs, x, strict=True):
                ax.annotate(r.label, (xi, r.summary.latency.p99_ms), textcoords="offset points", xytext=(4, 6))
        ax.set_xlabel("throughput (OK responses/s)")
        ax.set_ylabel("latency (ms)")
        top = max((r.summary.latency.p99_ms for r in self.runs), default=0.0)
        ax.set_ylim(0, top * 1.15 or 1.0)  # room for the labels above the highest point
        ax.set_xlim(left=0)
        ax.set_title(f"{self.target}\n{self.inputs} -> {self.output_format}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path

    def write_all(self, out_dir: Path, stem: str = "loadtest") -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        return [
            self.write_json(out_dir / f"{stem}.json"),
            self.write_csv(out_dir / f"{stem}.csv"),
            self.write_plot(out_dir / f"{stem}.png"),
        ]

    def print(self, console: Console | None = None) -> None:
        # Wide enough for the whole table when the output is a file or a pipe (rich assumes 80).
        console = console or Console(width=max(Console().width, 130))
        table = Table(title=f"{self.target}: {self.inputs} -> {self.output_format}")
        for col in ("load", "sent", "ok", "errors", "rps", "p50", "p90", "p99", "p99.9", "max", "send lag max"):
            table.add_column(col, justify="left" if col in ("load", "errors") else "right")
        for r in self.runs:
            s, lat = r.summary, r.summary.latency
            errors = ", ".join(f"{code} {n}" for code, n in s.errors.items()) or "-"
            table.add_row(
                r.label,
                str(s.sent),
                str(s.ok),
                errors,
                f"{s.throughput_rps:.2f}",
                *(f"{v:.0f}" for v in (lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.p999_ms, lat.max_ms)),
                f"{s.send_lag_max_ms:.0f}",
            )
        console.print(table)
        console.print("latencies in ms, OK responses only, from each request's intended send time")
        for r in self.runs:
            if (s := r.summary).rejected:
                rej = s.rejection_latency
                console.print(
                    f"{r.label}: {s.rejected} of {s.sent} refused (RESOURCE_EXHAUSTED) in p50 {rej.p50_ms:.1f} ms, "
                    f"p99 {rej.p99_ms:.1f} ms, max {rej.max_ms:.1f} ms; goodput {s.throughput_rps:.2f} OK/s"
                )
        if any(r.triton for r in self.runs):
            self._print_triton(console)
        for r in self.runs:
            if (g := r.gateway) is not None:
                codes = ", ".join(f"{c} {n}" for c, n in g.codes.items())
                console.print(
                    f"gateway at {r.label}: Triton calls {g.triton_ms:.1f} ms each, the gateway's own time "
                    f"{g.own_ms:.1f} ms per request; it answered {codes}"
                )
        for r in self.runs:
            if (c := r.cross_check) is not None:
                verdict = "agree" if c.agrees else "DISAGREE"
                console.print(
                    f"perf_analyzer at concurrency {c.concurrency}: {c.perf_analyzer_rps:.2f} req/s vs loadtest "
                    f"{c.loadtest_rps:.2f} req/s: {c.difference:.1%} apart, {verdict} (tolerance {c.tolerance:.0%}); "
                    f"medians {c.perf_analyzer_p50_ms:.0f} vs {c.loadtest_p50_ms:.0f} ms: {c.explanation}"
                )

    def _print_triton(self, console: Console) -> None:
        table = Table(title="where the time went (Triton's counters, ms per successful request)")
        for col in ("load", "model", "requests", "avg batch", "queue", "compute in", "compute", "compute out", "total"):
            table.add_column(col, justify="left" if col in ("load", "model") else "right")
        for r in self.runs:
            for m in r.triton:
                table.add_row(
                    r.label,
                    m.model,
                    str(m.requests),
                    f"{m.avg_batch:.2f}",
                    *(
                        f"{v:.1f}"
                        for v in (m.queue_ms, m.compute_input_ms, m.compute_infer_ms, m.compute_output_ms, m.request_ms)
                    ),
                )
        console.print(table)


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        from matteserve.errors import MatteserveError

        raise MatteserveError("the plots need matplotlib: pip install 'matteserve[loadtest]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
