"""The ``matteserve`` command: build, serve, and (from the other packages) remove, loadtest, bench."""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import signal
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from matteserve import container, zoo
from matteserve.build.configs import Target
from matteserve.build.runtime_choice import MEASURE_SECONDS
from matteserve.client.remove_cli import remove
from matteserve.errors import MatteserveError
from matteserve.extras import missing_extra
from matteserve.gateway.config import GatewayConfig, LogFormat, flag_of
from matteserve.loadtest.bench_cli import app as bench_app
from matteserve.loadtest.cli import loadtest
from matteserve.paths import default_repository
from matteserve.pipeline.decode import ImageLimits
from matteserve.runtimes import Precision, Runtime

app = typer.Typer(
    name="matteserve",
    help="Background removal served by Triton Inference Server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
logger = logging.getLogger("matteserve")
Command = Callable[..., None]


def setup_logging(verbose: bool = False, json_format: bool = False) -> None:
    from matteserve.logs import configure

    configure(logging.DEBUG if verbose else logging.INFO, json_format=json_format)


def gateway_options(prefix: str = "", fixed: tuple[str, ...] = ()) -> Callable[[Command], Command]:
    """Give a command one option per GatewayConfig field but ``fixed``, named ``--<prefix><flag>``, which
    it receives in its ``**options`` and turns into a config with ``gateway_config``."""
    hints = typing.get_type_hints(GatewayConfig)
    options = []
    for f in fields(GatewayConfig):
        if f.name in fixed:
            continue
        hint, default = hints[f.name], f.default
        if hint == tuple[str, ...]:  # a repeated option
            hint, default = list[str], list(typing.cast(tuple[str, ...], default))
        option = typer.Option(
            f"--{prefix.replace('_', '-')}{flag_of(f)}",
            help=f.metadata["help"],
            rich_help_panel="Gateway" if prefix else None,
        )
        options.append(
            inspect.Parameter(
                prefix + f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, option]
            )
        )

    def add(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = own.replace(parameters=[*kept, *options])  # type: ignore[attr-defined]
        return command

    return add


def gateway_config(options: dict[str, Any], prefix: str = "", **fixed: Any) -> GatewayConfig:
    """The config given by the options that ``gateway_options(prefix)`` added."""
    given: dict[str, Any] = {
        name.removeprefix(prefix): tuple(v) if isinstance(v, list) else v for name, v in options.items()
    }
    return GatewayConfig(**given, **fixed)


def resolve_spec(
    model: str,
    onnx: Path | None,
    input_size: str | None,
    mean: str | None,
    std: str | None,
    scaling: zoo.Scaling | None,
    output_index: int,
    activation: zoo.Activation,
    output_norm: zoo.OutputNorm,
) -> zoo.ModelSpec:
    """A zoo model, or a user ONNX described by the preprocessing options."""
    if model in zoo.ZOO and input_size is None:
        return zoo.get_spec(model)
    if onnx is None or input_size is None or mean is None or std is None or scaling is None:
        raise MatteserveError(
            f"{model!r} is not in the zoo ({', '.join(sorted(zoo.ZOO))}); a custom model needs --onnx, "
            "--input-size, --mean, --std and --scaling"
        )
    return zoo.custom_spec(model, input_size, mean, std, scaling, output_index, activation, output_norm)


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Zoo model name, or a name for --onnx.")]
OnnxOpt = Annotated[Path | None, typer.Option(help="A local ONNX file (required for models without a download).")]
SizeOpt = Annotated[str | None, typer.Option(help="Custom model input: 320, 1024x768 or short512/32.")]
MeanOpt = Annotated[str | None, typer.Option(help="Custom model mean: one or three numbers, e.g. 0.485,0.456,0.406.")]
StdOpt = Annotated[str | None, typer.Option(help="Custom model std: one or three numbers.")]
ScalingOpt = Annotated[zoo.Scaling | None, typer.Option(help="Custom model pixel scaling before mean/std.")]
OutIdxOpt = Annotated[int, typer.Option(help="Custom model: which output holds the matte.")]
ActOpt = Annotated[zoo.Activation, typer.Option(help="Custom model: activation applied to the output.")]
NormOpt = Annotated[zoo.OutputNorm, typer.Option(help="Custom model: min-max stretch or clip the output.")]
TargetOpt = Annotated[Target, typer.Option(help="cpu: onnxruntime in Triton's python backend; gpu: TensorRT.")]
MaxBatchOpt = Annotated[
    int | None, typer.Option(help="Max batch size; by default measured on this machine (CPU target).")
]
MaxPixelsOpt = Annotated[int, typer.Option(help="Largest input accepted, in pixels.")]
RuntimeOpt = Annotated[
    Runtime | None, typer.Option(help="CPU: serve the model in this runtime (default: the fastest measured).")
]
PrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        help="CPU: fp32 forces FP32 arithmetic (with --runtime onnxruntime, the reference); default: the "
        "fastest that passes the gate (INT8 is tried where the CPU has VNNI)."
    ),
]


@app.command()
def build(
    model: ModelOpt = zoo.DEFAULT_MODEL,
    out: Annotated[Path | None, typer.Option(help="Repository folder (default: in the cache).")] = None,
    target: TargetOpt = Target.CPU,
    onnx: OnnxOpt = None,
    input_size: SizeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    scaling: ScalingOpt = None,
    output_index: OutIdxOpt = 0,
    activation: ActOpt = zoo.Activation.NONE,
    output_norm: NormOpt = zoo.OutputNorm.MIN_MAX,
    max_batch_size: MaxBatchOpt = None,
    max_pixels: MaxPixelsOpt = ImageLimits.max_pixels,
    if_stale: Annotated[
        bool,
        typer.Option(
            help="GPU: reuse the stored engine if it fits this GPU, TensorRT, model and options, else build one; "
            "the repository's other files are always written afresh from this installation."
        ),
    ] = False,
    parity_photos: Annotated[
        Path | None,
        typer.Option(
            help="GPU: folder with calibration/ and gate/ photos for the FP16 parity gate (default: "
            "$MATTESERVE_PARITY_PHOTOS, else scikit-image's).",
        ),
    ] = None,
    engines: Annotated[
        Path | None,
        typer.Option(
            envvar="MATTESERVE_ENGINES",
            help="GPU: engine store shared by nodes, one engine per GPU model and TensorRT (default: OUT/../engines).",
        ),
    ] = None,
    workspace_mib: Annotated[int, typer.Option(help="GPU: TensorRT builder workspace limit, MiB.")] = 4096,
    builder_opt_level: Annotated[int, typer.Option(help="GPU: TensorRT builder optimisation level, 0-5.")] = 3,
    fold_input: Annotated[
        bool, typer.Option(help="CPU: preprocess sends uint8 pixels to a graph that normalises them (as on GPU).")
    ] = False,
    runtime: RuntimeOpt = None,
    precision: PrecisionOpt = None,
    measure_seconds: Annotated[
        float,
        typer.Option(help="CPU: seconds each runtime candidate is measured end to end; 0 keeps the reference."),
    ] = MEASURE_SECONDS,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fetch and prepare a matting model and write a complete Triton model repository. On CPU the
    build measures each runtime, precision and thread layout this machine offers and keeps the
    fastest end to end whose mattes pass the parity gate against FP32."""
    from matteserve.build.builder import build as build_repository
    from matteserve.build.repository import read_manifest

    setup_logging(verbose)
    spec = resolve_spec(model, onnx, input_size, mean, std, scaling, output_index, activation, output_norm)
    target_options: dict[str, Any] = {"runtime": runtime, "precision": precision, "measure_seconds": measure_seconds}
    if fold_input and target is Target.CPU:
        target_options["fold_input"] = True
    if target is Target.GPU:
        target_options = {
            "if_stale": if_stale,
            "parity_photos": parity_photos,
            "engines": engines,
            "workspace_mib": workspace_mib,
            "optimisation_level": builder_opt_level,
        }
    path = build_repository(
        spec,
        out or default_repository(spec.name, target.value),
        target=target,
        onnx=onnx,
        max_batch_size=max_batch_size,
        limits=ImageLimits(max_pixels=max_pixels),
        **target_options,
    )
    typer.echo(f"model repository: {path}")
    if target is Target.CPU and (choice := (read_manifest(path) or {}).get("runtime_choice")):
        typer.echo(f"runtime: {choice['chosen']}")


@app.command()
@gateway_options(prefix="gateway_", fixed=("tritons", "max_pixels"))
def serve(
    model: ModelOpt = zoo.DEFAULT_MODEL,
    repository: Annotated[Path | None, typer.Option(help="Serve this repository instead of building one.")] = None,
    rebuild: Annotated[bool, typer.Option(help="Rebuild the repository even if it exists.")] = False,
    address: Annotated[
        str, typer.Option(help="Address Triton binds to; beyond loopback it needs --expose-triton.")
    ] = "127.0.0.1",
    expose_triton: Annotated[
        bool,
        typer.Option(
            help="Let Triton bind beyond loopback. Triton has no authentication: anyone who reaches its ports "
            "can run inference and read its model configs, so only do this on a private network."
        ),
    ] = False,
    http_port: Annotated[int, typer.Option(help="Triton HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="Triton gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Triton metrics port.")] = 8002,
    max_batch_size: MaxBatchOpt = None,
    max_pixels: MaxPixelsOpt = ImageLimits.max_pixels,
    runtime: RuntimeOpt = None,
    precision: PrecisionOpt = None,
    allow_stand_in: Annotated[
        bool, typer.Option(help="Serve a stand-in repository (`build --model null`: a fixed matte, no model).")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    **gateway: Any,
) -> None:
    """Start Triton on the CPU default (building the model repository if missing) and the gRPC gateway
    in front of it, until Ctrl-C."""
    from matteserve.build.builder import build as build_repository
    from matteserve.build.gpu.stamp import check_repository
    from matteserve.build.repository import is_current, read_manifest
    from matteserve.gateway import GatewayProcess
    from matteserve.gateway.config import is_loopback
    from matteserve.tritonserver import TritonConfig, TritonServer

    setup_logging(verbose)
    if not is_loopback(address) and not expose_triton:
        raise typer.BadParameter(
            f"Triton has no authentication, so it binds to loopback only, not {address}; the gateway "
            "(--gateway-host, with --gateway-api-keys-file) is what callers reach. Add --expose-triton if only "
            "a private network (a container network, a firewalled subnet) reaches this address.",
            param_hint="--address",
        )
    if not is_loopback(address):
        logger.warning("Triton binds to %s without authentication (--expose-triton)", address)
    spec = zoo.get_spec(model)
    repo = repository or default_repository(spec.name, Target.CPU.value)
    stand_in = spec.stand_in if repository is None else bool((read_manifest(repo) or {}).get("stand_in"))
    if stand_in and not allow_stand_in:
        raise MatteserveError(
            f"{repo} is the STAND-IN matting step: every image gets the same fixed matte, no model runs. "
            "It is for measuring the stack (`matteserve bench`); pass --allow-stand-in to serve it anyway"
        )
    limits = ImageLimits(max_pixels=max_pixels)
    if repository is None and (rebuild or not is_current(repo, limits, max_batch_size, runtime, precision)):
        build_repository(spec, repo, max_batch_size=max_batch_size, limits=limits, runtime=runtime, precision=precision)
    check_repository(repo)  # a GPU repository's engine must fit this GPU and TensorRT
    cfg = TritonConfig(repo, address=address, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server = TritonServer(cfg, log_path=repo.parent / f"{repo.name}.triton.log")
    typer.echo(f"starting Triton on {repo} (log: {server.log_path})")
    server.start()
    gateway_cfg = gateway_config(gateway, "gateway_", tritons=(cfg.grpc_url,), max_pixels=max_pixels)
    gateway_process = GatewayProcess(gateway_cfg, log_path=repo.parent / f"{repo.name}.gateway.log")
    try:
        typer.echo(f"Triton ready: gRPC {cfg.grpc_url}  HTTP {cfg.http_url}  metrics {cfg.metrics_url}")
        gateway_process.start()
        typer.echo(f"gateway ready: gRPC {gateway_cfg.address}  metrics {gateway_cfg.metrics_url}")
        typer.echo(f"  (log: {gateway_process.log_path})")
        typer.echo("Ctrl-C to stop")
        while not stop.wait(1.0):
            if server.process is None or server.process.poll() is not None:
                raise MatteserveError(f"tritonserver exited; see {server.log_path}")
            if gateway_process.process is None or gateway_process.process.poll() is not None:
                raise MatteserveError(f"the gateway exited; see {gateway_process.log_path}")
    finally:
        typer.echo("stopping")
        gateway_process.stop()
        server.stop()


@app.command("gateway")
@gateway_options()
def run_gateway(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    **options: Any,
) -> None:
    """Serve matteserve.v1.BackgroundRemoval over gRPC in front of one or more Triton servers, until
    SIGTERM (`serve` starts one next to its own Triton)."""
    import asyncio

    from matteserve.gateway.server import serve as serve_gateway

    cfg = gateway_config(options)
    setup_logging(verbose, json_format=cfg.log_format is LogFormat.JSON)
    if applied := container.tune_allocator(os.environ):  # started by hand: no serving environment
        logger.info("allocator settings applied: %s", " ".join(applied))
    asyncio.run(serve_gateway(cfg))


api_key = typer.Typer(
    help="API keys for the gateway, which stores only their hashes (--api-keys-file).", no_args_is_help=True
)
app.add_typer(api_key, name="api-key")


@api_key.command("new")
def new_api_key() -> None:
    """Print a fresh key, to give to the caller, and its hash, for the gateway's key file."""
    from matteserve.gateway.auth import hash_key

    key = secrets.token_urlsafe(32)
    typer.echo(f"key (give to the caller): {key}\nhash (put in the gateway's key file): {hash_key(key)}")


@api_key.command("hash")
def hash_api_key() -> None:
    """Print the hash of the key read from stdin (not an argument: it would stay in the shell's history)."""
    from matteserve.gateway.auth import hash_key

    typer.echo(hash_key(sys.stdin.readline().strip()))


@app.command("check-engine")
def check_engine(
    repository: Annotated[Path, typer.Argument(help="A model repository built with --target gpu.")],
) -> None:
    """Exit 1 unless the repository is built (it has a build manifest), by this matteserve, and, for a
    GPU repository, has a TensorRT engine for this node's GPU and TensorRT."""
    from matteserve.build.gpu.stamp import check_repository
    from matteserve.build.repository import is_current

    found = check_repository(repository)
    if not is_current(repository):
        raise MatteserveError(
            f"{repository} was built by another matteserve (its adapters differ from this installation's): "
            f"rebuild it (GPU: matteserve build --target gpu --if-stale --out {repository})"
        )
    if found is None:
        typer.echo("CPU repository: no engines")
        return
    typer.echo(f"{found.plan}: fits (TensorRT {found.tensorrt}, sm {found.compute_capability}, {found.precision})")
    if found.precision != "fp16":
        typer.secho(f"warning: FP32 engine: {found.build.get('fp16_fallback')}", fg=typer.colors.YELLOW, err=True)


@app.command("tensorrt-version")
def tensorrt_version() -> None:
    """Print this node's TensorRT: libnvinfer's version, which the tensorrt Python package must equal;
    exit 1 when either is missing or they differ (the GPU image runs this when it is built)."""
    from matteserve.build.gpu import stamp

    library, package = stamp.tensorrt_library_version(), stamp.tensorrt_package_version()
    typer.echo(f"libnvinfer {library or 'not found'}; tensorrt package {package or 'not installed'}")
    stamp.agreed_tensorrt(library, package)
    if library is None or package is None:
        raise MatteserveError("the GPU build needs both libnvinfer and the tensorrt Python package of its release")


@app.command("python-shm")
def python_shm(
    repository: Annotated[Path, typer.Argument(help="A built model repository.")],
) -> None:
    """Print the python backend's shm-default-byte-size for this repository in this container: its
    python instances' starting regions together within half of /dev/shm, at most 256 MiB each."""
    from matteserve import container
    from matteserve.build.repository import python_instances

    typer.echo(container.python_shm_bytes(python_instances(repository), container.dev_shm_bytes()))


@app.command("models")
def list_models() -> None:
    """List the model zoo."""
    for name, spec in sorted(zoo.ZOO.items()):
        default = " (default)" if name == zoo.DEFAULT_MODEL else ""
        typer.echo(f"{name:24} {spec.description}{default}")


app.command("remove")(remove)
app.command("loadtest")(loadtest)
app.add_typer(bench_app)


def main() -> None:
    try:
        app()
    except (MatteserveError, ModuleNotFoundError) as e:
        # A subcommand imports its extra's packages when it runs (`build` needs the server extra).
        error = missing_extra(e) if isinstance(e, ModuleNotFoundError) else e
        if error is None:
            raise
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
