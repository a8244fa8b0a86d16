"""``matteserve bench gpu``: numbers for the GPU path, each printed as a ratio measured in one run.

``cpu``: on this CPU, what the uint8 fold changes: the bytes preprocess sends to the model per
request, and images/s of the model step as served (normalise + FP32 graph + finalise, vs the folded
graph on uint8 pixels), alternating rounds on the same photos.

``fold-e2e``: the same comparison end to end through Triton on CPU, the default repository vs
``matteserve build --fold-input``, alternating rounds in one run.

``gate``: the FP16 parity gate on this CPU (onnxruntime): the FP16 graph with the FP32 islands chosen
on the calibration photos, and without any, on the gate photos.

``engine REPOSITORY``: engine-only images/s of the repository's TensorRT engine on this GPU at batch
1/8/32/64 (up to its max), host<->device copies included.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from matteserve import contract
from matteserve.zoo import DEFAULT_MODEL, get_spec

if TYPE_CHECKING:
    from matteserve.build.configs import ServingPlan

logger = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, help="Numbers for the GPU path.")

_ITEM_BYTES = {"TYPE_FP32": 4, "TYPE_UINT8": 1}


def pixel_bytes(plan: ServingPlan) -> int:
    """Bytes of one request's PIXELS tensor, from the rendered preprocess config."""
    import numpy as np

    from matteserve.build import configs

    out = configs.preprocess_config(plan).output[0]
    return int(np.prod(list(out.dims))) * _ITEM_BYTES[configs.model_config_pb2.DataType.Name(out.data_type)]


@app.command()
def cpu(
    seconds: Annotated[float, typer.Option(help="Seconds per round; 4 rounds per variant.")] = 2.5,
    threads: Annotated[int, typer.Option(help="onnxruntime threads (as the CPU matting model).")] = 2,
) -> None:
    """Bytes and images/s of the model step on CPU, FP32 input vs the uint8 fold."""
    import numpy as np
    import onnx

    from matteserve.build import onnx_prep, tuning, weights
    from matteserve.build.configs import ServingPlan, Target
    from matteserve.build.gpu import graph, parity
    from matteserve.build.photos import calibration
    from matteserve.pipeline import tensor
    from matteserve.stages import MattingRunner

    spec = get_spec(DEFAULT_MODEL)
    cpu_plan = ServingPlan.for_host(spec, Target.CPU)
    gpu_plan = ServingPlan.for_host(spec, Target.GPU, engine_files=(("9.0", "x"),))
    fp32_bytes, uint8_bytes = pixel_bytes(cpu_plan), pixel_bytes(gpu_plan)
    pixels = list(parity.sample_pixels(calibration(), spec).values())

    with tempfile.TemporaryDirectory() as tmp:
        prepared = onnx_prep.prepare(weights.weights_path(spec), spec, Path(tmp) / "p.onnx").path
        folded_path = Path(tmp) / "folded.onnx"
        onnx.save(graph.fold_io(graph.simplify(onnx.load(str(prepared)), spec, Path(tmp)), spec), str(folded_path))
        served = MattingRunner(prepared, spec, threads=threads)
        folded = graph.session(folded_path, threads=threads)
        photo = itertools.cycle(pixels)
        steps = {
            "fp32": lambda: served.run([tensor.normalise(next(photo), spec)]),
            "uint8": lambda: tensor.alpha_to_uint8(
                folded.run(["ALPHA"], {"PIXELS": next(photo)[None]})[0]  # type: ignore[attr-defined]
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(4):
            for name, step in steps.items():
                rates[name].append(tuning.images_per_s(step, 1, seconds))
    a, b = float(np.median(rates["fp32"])), float(np.median(rates["uint8"]))
    typer.echo(f"{spec.name}, onnxruntime CPU, {threads} threads, {len(pixels)} photos, median of 4 alternating rounds")
    typer.echo(
        f"  PIXELS per request: FP32 {fp32_bytes:,} B  uint8 {uint8_bytes:,} B  ({fp32_bytes / uint8_bytes:.0f}x)"
    )
    typer.echo(f"  model step images/s: normalise+FP32 graph {a:.2f}  folded uint8 graph {b:.2f}  (ratio {b / a:.3f})")


@app.command()
def gate(
    batch: Annotated[
        int | None, typer.Option(help="Batch size of the batched gate run (default: the build's).")
    ] = None,
) -> None:
    """The FP16 graph's gate reports, with and without FP32 islands."""
    from matteserve.build import onnx_prep, weights
    from matteserve.build.gpu import fp16, parity
    from matteserve.build.gpu.build import photo_sets, prepare_graphs

    spec, sets, batch = get_spec(DEFAULT_MODEL), photo_sets(), batch or parity.GATE_BATCH
    with tempfile.TemporaryDirectory() as tmp:
        prepared = onnx_prep.prepare(weights.weights_path(spec), spec, Path(tmp) / "p.onnx").path
        for keep_above, what in ((fp16.KEEP_ABOVE, "FP32 islands"), (float("inf"), "no FP32 islands")):
            graphs = prepare_graphs(
                prepared, spec, sets, Path(tmp), keep_above=keep_above, batch=batch or parity.GATE_BATCH
            )
            typer.echo(f"{spec.name}, {what}: {sorted(graphs.keep_fp32) or 'none'}")
            for report in graphs.reports[1:]:
                typer.echo(report.table())


@app.command("fold-e2e")
def fold_e2e(
    out: Annotated[Path, typer.Option(help="Folder for the two repositories and Triton logs.")] = Path("bench-fold"),
    size: Annotated[int, typer.Option(help="Square JPEG size in px.")] = 1024,
    seconds: Annotated[float, typer.Option(help="Seconds per round.")] = 20.0,
    rounds: Annotated[int, typer.Option(help="Alternating rounds per repository.")] = 3,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
    max_batch_size: Annotated[int, typer.Option(help="Same max batch for both repositories.")] = 2,
) -> None:
    """End-to-end images/s through Triton on CPU, the default repository vs `build --fold-input`.

    Alternating rounds on the same photos in one run."""
    import numpy as np

    from matteserve.build.builder import build
    from matteserve.loadtest.bench import end_to_end, free_port
    from matteserve.loadtest.images import generated
    from matteserve.loadtest.targets import TritonTarget
    from matteserve.tritonserver import TritonConfig, TritonServer

    spec = get_spec(DEFAULT_MODEL)
    images = [i.data for i in generated(size)]
    repos = {
        "fp32 pixels": build(spec, out / "repo-default", max_batch_size=max_batch_size),
        "uint8 fold": build(spec, out / "repo-fold", max_batch_size=max_batch_size, fold_input=True),
    }
    rates: dict[str, list[float]] = {name: [] for name in repos}
    for r in range(rounds):
        for name, repo in repos.items():
            cfg = TritonConfig(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
            with TritonServer(cfg, log_path=out / f"triton-{repo.name}.log"):
                target = partial(TritonTarget, cfg.grpc_url, images)
                rates[name].append(end_to_end(target, images, [concurrency], seconds).images_per_s)
            typer.echo(f"round {r + 1} {name}: {rates[name][-1]:.2f} images/s")
    a, b = (float(np.median(v)) for v in rates.values())
    typer.echo(f"{size}px JPEG -> PNG, concurrency {concurrency}, max batch {max_batch_size}, median of {rounds}")
    typer.echo(f"  end-to-end images/s: fp32 pixels {a:.2f}  uint8 fold {b:.2f}  (ratio {b / a:.3f})")


@app.command("engine")
def engine_bench(
    repository: Annotated[Path, typer.Argument(help="A repository built with --target gpu on this GPU.")],
    batches: Annotated[
        str, typer.Option(help="Batch sizes, comma-separated (capped at the engine's max).")
    ] = "1,8,32,64",
    seconds: Annotated[float, typer.Option(help="Seconds per batch size.")] = 5.0,
) -> None:
    """Engine-only images/s on this GPU, copies to and from the device included."""
    import numpy as np

    from matteserve.build import tuning
    from matteserve.build.gpu import engine, stamp

    found = stamp.check_repository(repository)
    if found is None:
        raise typer.BadParameter(f"{repository} has no TensorRT engine")
    options = engine.EngineOptions(**(found.options | {"typing": engine.Typing(found.options["typing"])}))
    runner = engine.EngineRunner(repository / contract.MATTING / "1" / found.plan, options)
    rng = np.random.default_rng(0)
    try:
        typer.echo(f"{found.plan}: TensorRT {found.tensorrt}, compute capability {found.compute_capability}")
        base = None
        for batch in sorted({min(int(b), options.max_batch_size) for b in batches.split(",")}):
            x = rng.integers(0, 256, size=options.shape(batch), dtype=np.uint8)
            rate = tuning.images_per_s(partial(runner.run, x), batch, seconds)
            base = base or rate
            typer.echo(f"  batch {batch:3d}: {rate:9.1f} images/s  ({rate / base:.2f}x batch 1)")
    finally:
        runner.close()
