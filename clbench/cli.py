"""The ``clbench`` command: every benchmark as a subcommand."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
import typer

from cl_core.data import PROTOCOL_VERSION
from clbench import report

app = typer.Typer(help="Benchmarks of the continual-learning core and service.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Benchmarks report numbers measured in one run; compare ratios, not absolute times, across machines."""


@app.command()
def speed(
    samples: int = typer.Option(1000, help="samples for importance estimation"),
    repeats: int = typer.Option(5, help="repeats of the fast path (median reported)"),
    steps: int = typer.Option(300, help="timed training steps per variant"),
    libraries: bool = typer.Option(True, help="also measure Opacus and BackPACK when installed"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write speed.json into this folder"),
) -> None:
    """Importance estimation (exact per-sample paths vs a per-sample loop) and the EWC penalty's step cost."""
    from clbench.speed import SpeedReport, measure_importance, measure_steps

    if threads:
        torch.set_num_threads(threads)
    result = SpeedReport(samples=samples, threads=torch.get_num_threads())
    with report.progress_bar() as bar:
        task = bar.add_task("importance", total=None)
        result.importance = measure_importance(
            samples, repeats, libraries, on_step=lambda s: bar.update(task, description=s)
        )
        bar.update(task, description="training steps")
        result.steps = measure_steps(steps, on_step=lambda s: bar.update(task, description=s))
        bar.update(task, description="done", total=1, completed=1)
    report.table(
        f"Importance on the protocol MLP 784-400-400-10, {samples} samples ({result.threads} threads)",
        ["quantity", "path", "seconds", "× faster than loop", "max |Δ| vs loop", "note"],
        [
            (
                r.quantity,
                r.path,
                report.fmt(r.seconds, 4),
                report.fmt(r.speedup_vs_loop, 1),
                "—" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
                r.note,
            )
            for r in result.importance
        ],
    )
    report.table(
        "One Adam step, batch 128 (median)",
        ["variant", "ms", "× plain step"],
        [(r.variant, report.fmt(r.median_ms, 2), report.fmt(r.ratio_to_plain, 3)) for r in result.steps],
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "speed.json").write_text(json.dumps(result.to_json(), indent=2))
        report.console.print(f"wrote {out / 'speed.json'}")


def _fail(message: str) -> typer.Exit:
    """Print a usage error the way typer does and leave with status 2."""
    report.console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


@app.command()
def tune(
    scenario: str = typer.Option("all", help="scenario(s), comma-separated, or 'all'"),
    method: str | None = typer.Option(None, help="method name(s), comma-separated (default: every one with a λ)"),
    epochs: int = typer.Option(10, help="epochs per task (the protocol: 10)"),
    seed: int = typer.Option(0, help="the protocol tunes with seed 0"),
    grid: str | None = typer.Option(None, help="strengths to try instead of the method's grid, comma-separated"),
    protocol: int = typer.Option(PROTOCOL_VERSION, help="benchmark protocol version: 2, or 1 (its memory)"),
    memory: int | None = typer.Option(None, help="exemplar memory: the total (v2, default 200); per class (v1, 20)"),
    replay: str | None = typer.Option(None, help="replay schedule of '+replay' methods: concat or batch (v2)"),
    replay_ratio: float | None = typer.Option(
        None, help="replayed samples per current sample in each batch ('batch'; default 2)"
    ),
    out: Path | None = typer.Option(None, help="record to update (default: the packaged record of the protocol)"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    tasks: int | None = typer.Option(None, hidden=True, help="truncate every scenario to this many tasks (tests)"),
) -> None:
    """Choose each method's hyper-parameters per scenario on the validation split (never on test) and record the
    grid and scores."""
    from cl_core.data import build_scenario, load_mnist5k
    from clbench.progress import nested_bars
    from clbench.run import RunSettings, method_hparams
    from clbench.selection import default_methods, parse_methods, parse_scenarios, split_list
    from clbench.tune import TUNED_PATHS, candidates, grid_for, has_lambda, strength_argument, tune_all

    if threads:
        torch.set_num_threads(threads)
    try:
        scenarios = parse_scenarios(scenario)
        methods = parse_methods(method, [m for m in default_methods() if has_lambda(m)])
        settings = RunSettings(protocol=protocol, memory=memory, replay=replay, replay_ratio=replay_ratio)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    without = [m for m in methods if not has_lambda(m)]
    if without:
        raise _fail(f"{', '.join(without)}: no λ to tune (fine-tune, joint and plain replay have none)")
    try:
        values = None if grid is None else [float(v) for v in split_list(grid)]
    except ValueError as exc:
        raise _fail(f"--grid takes numbers separated by commas, got {grid!r}") from exc
    if values is not None and len(methods) > 1 and len({strength_argument(m) for m in methods}) > 1:
        raise _fail("--grid sets one strength: tune methods with different strengths (λ, c, α) separately")
    lam_grid = None if values is None else {strength_argument(methods[0]): values}
    target = out or TUNED_PATHS[protocol]
    total = sum(len(candidates(lam_grid or grid_for(m))) for m in methods) * len(scenarios)
    data = load_mnist5k()

    def fixed(scen: str, name: str) -> dict[str, object]:
        built = build_scenario(scen, data.train, data.test, tasks=tasks)
        return {k: v for k, v in method_hparams(built, name, None, settings).items()}

    with nested_bars("candidates", total) as bars:
        done = tune_all(
            scenarios,
            methods,
            data.train,
            out=target,
            epochs=epochs,
            seed=seed,
            grid=lam_grid,
            memory_hparams=settings.memory_hparams(),
            fixed_hparams=fixed,
            tasks=tasks,
            bars=bars,
            protocol=protocol,
        )
    for scen, name, entry in done:
        report.table(
            f"{scen} · {name}: validation ACC per candidate ({entry.epochs} epochs, seed {entry.seed}, "
            f"{entry.fit_samples} fit / {entry.val_samples} validation samples)",
            ["hparams", "validation ACC", ""],
            [
                (
                    ", ".join(f"{k}={v:g}" for k, v in c.hparams.items()),
                    report.fmt(c.val_acc, 4),
                    "← chosen" if c.hparams == entry.chosen else "",
                )
                for c in entry.candidates
            ],
        )
    report.console.print(f"updated {target}")


@app.command()
def run(
    scenario: str = typer.Option("all", help="scenario(s), comma-separated, or 'all'"),
    method: str | None = typer.Option(None, help="method name(s) base[+replay][+wa], comma-separated"),
    seeds: str | None = typer.Option(None, help="comma-separated seeds (default 0,1,2; --quick: 0)"),
    out: Path = typer.Option(Path("bench-out/run"), help="folder for results.jsonl, summary.md and the PNGs"),
    quick: bool = typer.Option(False, help="one seed, 2 epochs; finetune, joint, ewc, mas unless --method"),
    epochs: int | None = typer.Option(None, help="epochs per task (the protocol: 10; --quick: 2)"),
    lam: float | None = typer.Option(None, "--lambda", help="strength for every method instead of the tuned values"),
    protocol: int = typer.Option(PROTOCOL_VERSION, help="benchmark protocol version: 2, or 1 (its memory)"),
    memory: int | None = typer.Option(None, help="exemplar memory: the total (v2, default 200); per class (v1, 20)"),
    replay: str | None = typer.Option(None, help="replay schedule of '+replay' methods: concat or batch (v2)"),
    replay_ratio: float | None = typer.Option(
        None, help="replayed samples per current sample in each batch ('batch'; default 2)"
    ),
    step_rounds: int | None = typer.Option(None, help="rounds of the step-cost measurement (0: skip)"),
    plots: bool = typer.Option(True, help="write the PNG plots"),
    resume: bool = typer.Option(False, help="keep the runs already in DIR/results.jsonl and skip them"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    tasks: int | None = typer.Option(None, hidden=True, help="truncate every scenario to this many tasks (tests)"),
) -> None:
    """Run the benchmark protocol and write DIR/results.jsonl, DIR/summary.md and PNG plots."""
    from cl_core.data import load_mnist5k
    from clbench.overhead import STEP_COLUMNS, measure_step_costs, step_rows
    from clbench.plots import write_plots
    from clbench.progress import nested_bars
    from clbench.run import RunSettings, run_benchmark
    from clbench.selection import QUICK_METHODS, default_methods, parse_methods, parse_scenarios, parse_seeds
    from clbench.summary import COST_COLUMNS, aggregate, cost_rows, scenario_columns, scenario_rows, summary_markdown
    from clbench.tune import TUNED_PATHS

    if threads:
        torch.set_num_threads(threads)
    try:
        scenarios = parse_scenarios(scenario)
        methods = parse_methods(method, QUICK_METHODS if quick else default_methods())
        seed_list = parse_seeds(seeds or ("0" if quick else "0,1,2"))
        epochs = epochs if epochs is not None else (2 if quick else 10)
        settings = RunSettings(
            epochs=epochs,
            tasks=tasks,
            protocol=protocol,
            memory=memory,
            replay=replay,
            replay_ratio=replay_ratio,
            lam=lam,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    rounds = step_rounds if step_rounds is not None else (5 if quick else 25)
    data = load_mnist5k()
    total = len(scenarios) * len(methods) * len(seed_list)
    with nested_bars("runs", total) as bars:
        records = run_benchmark(scenarios, methods, seed_list, out, settings, data=data, bars=bars, resume=resume)
    step_table = None
    if rounds > 0:
        with report.progress_bar() as bar:
            task = bar.add_task("training-step cost", total=rounds)
            costs = measure_step_costs(
                methods, data.train, rounds=rounds, on_round=lambda i, n: bar.update(task, completed=i)
            )
            bar.update(task, completed=rounds)
        step_table = (STEP_COLUMNS, step_rows(costs))

    groups = aggregate(records)
    for name in dict.fromkeys(s for s, _ in groups):
        report.table(
            f"{name}: final accuracy (ours: MNIST-5k, {epochs} epochs per task)",
            scenario_columns(),
            scenario_rows(groups, name),
        )
    report.table("Cost per method (this machine)", COST_COLUMNS, cost_rows(groups))
    if step_table is not None:
        report.table("Training-step overhead vs fine-tune (median, real trainer, batch 128)", *step_table)
    written = [p.name for p in write_plots(groups, out)] if plots else []
    command = (
        f"clbench run --scenario {','.join(scenarios)} --method {','.join(methods)} "
        f"--seeds {','.join(map(str, seed_list))} --epochs {epochs}"
        + (f" --lambda {lam:g}" if lam is not None else "")
        + (f" --protocol {protocol}" if protocol != PROTOCOL_VERSION else "")
        + (f" --memory {memory}" if memory is not None else "")
        + (f" --replay {replay}" if replay is not None else "")
        + (f" --replay-ratio {replay_ratio:g}" if replay_ratio is not None else "")
        + (f" --tasks {tasks}" if tasks is not None else "")
        + f" --out {out}"
    )
    facts = [
        f"{len(records)} runs; {epochs} epochs per task; torch threads per run: "
        + ", ".join(sorted({str(r["hparams"].get("torch_threads", "not recorded")) for r in records}))
        + "; "
        "λ: "
        + (f"--lambda {lam:g}" if lam is not None else f"tuned on the validation split ({TUNED_PATHS[protocol].name})"),
        f"protocol {protocol}; replay memory: "
        + (
            f"{settings.memory_size} exemplars in all, balanced over classes and tasks, schedule {settings.schedule}"
            + (f" (ratio {settings.ratio:g})" if settings.schedule == "batch" else "")
            if protocol == 2
            else f"{settings.memory_size} exemplars per class of the head, concatenated"
        ),
    ]
    (out / "summary.md").write_text(
        summary_markdown(groups, protocol=protocol, command=command, facts=facts, step_table=step_table, plots=written)
    )
    report.console.print(f"wrote {out / 'results.jsonl'}, {out / 'summary.md'} and {len(written)} plots")


@app.command()
def profile(
    method: str | None = typer.Option(None, help="method name(s), comma-separated (default: every core method)"),
    samples: int = typer.Option(1000, help="samples per update"),
    epochs: int = typer.Option(10, help="epochs per update"),
    repeats: int = typer.Option(3, help="timed updates per method (median reported)"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write profile.json into this folder"),
) -> None:
    """Wall time of one full update (train + consolidate) per method: the service's update latency."""
    from dataclasses import asdict

    from cl_core.data import load_mnist5k
    from clbench.profile import PROFILE_COLUMNS, profile_rows, profile_updates
    from clbench.selection import parse_methods, profile_methods

    if threads:
        torch.set_num_threads(threads)
    try:
        methods = parse_methods(method, profile_methods())
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    data = load_mnist5k()
    with report.progress_bar() as bar:
        task = bar.add_task("updates", total=len(methods) * repeats)
        costs = profile_updates(
            methods,
            data.train,
            samples=samples,
            epochs=epochs,
            repeats=repeats,
            on_update=lambda m, i: bar.update(task, description=f"update {i}/{repeats}: {m}", advance=1),
        )
    report.table(
        f"One full update: train {epochs} epochs on {samples} samples + consolidate "
        f"(median of {repeats}, {torch.get_num_threads()} threads)",
        PROFILE_COLUMNS,
        profile_rows(costs),
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps([asdict(c) for c in costs], indent=2))
        report.console.print(f"wrote {out / 'profile.json'}")


@app.command()
def rotation(
    samples: int = typer.Option(1000, help="training samples the rotations and the Fisher are measured on"),
    hidden: str = typer.Option("32,32", help="hidden widths of the MLP, comma-separated (narrow, so blocks fit)"),
    epochs: int = typer.Option(2, help="epochs of training on MNIST-5k before measuring"),
    max_block: int = typer.Option(2048, help="most weights in one full Fisher block"),
    seed: int = typer.Option(0, help="model and training seed"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write rotation.json into this folder"),
) -> None:
    """Off-diagonal share of the full per-sample Fisher of weight blocks, before and after R-EWC's rotation."""
    from clbench.rotation import measure_rotation

    if threads:
        torch.set_num_threads(threads)
    try:
        widths = [int(w) for w in hidden.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(f"--hidden takes comma-separated widths, got {hidden!r}") from exc
    with report.progress_bar() as bar:
        task = bar.add_task("rotation", total=None)
        result = measure_rotation(
            samples, widths, epochs, max_block, seed, on_step=lambda s: bar.update(task, description=s)
        )
        bar.update(task, description="done", total=1, completed=1)
    report.table(
        f"Off-diagonal share of the true Fisher of weight blocks: MLP 784-{'-'.join(map(str, widths))}-10, "
        f"{epochs} epochs on MNIST-5k (test accuracy {result.test_accuracy:.3f}), {samples} samples",
        ["layer", "block", "weights", "Σ|off|/Σ|F| plain", "rotated", "Σoff²/ΣF² plain", "rotated", "max |Δ| diag"],
        [
            (
                b.layer,
                b.block,
                b.weights,
                report.fmt(b.abs_share_plain),
                report.fmt(b.abs_share_rotated),
                report.fmt(b.squared_share_plain),
                report.fmt(b.squared_share_rotated),
                f"{b.max_abs_diff:.1e}",
            )
            for b in result.blocks
        ],
    )
    report.console.print(
        "max |Δ| diag: the rotated block's diagonal against the engine's exact diagonal Fisher of the rotated model."
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "rotation.json").write_text(json.dumps(result.to_json(), indent=2))
        report.console.print(f"wrote {out / 'rotation.json'}")


@app.command()
def load(
    architectures: str = typer.Option("mlp,cnn", help="comma-separated: mlp, cnn"),
    requests: int = typer.Option(600, help="predictions per measurement (bounded)"),
    concurrency: str = typer.Option("1,8,32", help="comma-separated client counts"),
    bodies: str = typer.Option("json,npy,png", help="comma-separated body forms: json, npy, png"),
    swaps: int = typer.Option(20, help="version swaps under load (0: skip)"),
    mixed_requests: int = typer.Option(3000, help="predictions while updates and promotions run (0: skip)"),
    gc_tuning: bool = typer.Option(True, help="the servers' garbage-collection tuning (off: CL_GC_FREEZE=false)"),
    capture: float | None = typer.Option(
        None, min=0.0, max=1.0, help="instead: capture this share of the traffic against none (`clbench.traffic`)"
    ),
    rounds: int = typer.Option(5, min=1, help="with --capture: interleaved rounds (median and spread reported)"),
    out: Path | None = typer.Option(None, help="write load.json into this folder"),
) -> None:
    """The service under bounded load on loopback: throughput, latency and server CPU per request with
    micro-batching on and off for JSON, .npy and PNG bodies, against the raw batched forward pass; the overhead over
    a bare forward pass, and failures during version swaps and while updates run.  With --capture RATE: the cost of
    capturing that share of the predicted inputs, at the first --concurrency (JSON bodies, batching on)."""
    if capture is not None:
        _load_capture(capture, rounds, requests, int(concurrency.split(",")[0]), out)
        return
    from clbench.load import measure

    with report.progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        result = measure(
            architectures=[a for a in architectures.split(",") if a],
            concurrencies=[int(c) for c in concurrency.split(",")],
            requests=requests,
            swaps=swaps,
            mixed_requests=mixed_requests,
            bodies=[b for b in bodies.split(",") if b],
            gc_tuned=gc_tuning,
            on_step=lambda s: bar.update(task, description=s),
        )
        bar.update(task, description="done", total=1, completed=1)
    rows = []
    for r in result.results:
        base = next(
            (
                b
                for b in result.results
                if (b.architecture, b.body, b.concurrency) == (r.architecture, r.body, r.concurrency) and not b.batching
            ),
            None,
        )
        gain = r.throughput / base.throughput if base and r.batching and base.throughput else None
        limit = result.forward_limit(r.architecture)
        rows.append(
            (
                r.architecture,
                r.body,
                "on" if r.batching else "off",
                r.concurrency,
                r.requests,
                r.failed,
                report.fmt(r.throughput, 0),
                report.fmt(r.p50_ms, 2),
                report.fmt(r.p99_ms, 2),
                report.fmt(r.p99_ms / r.p50_ms if r.p50_ms else None, 2),
                report.fmt(r.cpu_ms_per_request, 3),
                report.fmt(r.client_cpu_ms_per_request, 3),
                report.fmt(gain, 2),
                report.fmt(100 * r.throughput / limit, 1),
            )
        )
    gc_state = "on" if result.gc_tuned else "off"
    report.table(
        f"Predictions on loopback (one input per request; garbage-collection tuning {gc_state})",
        [
            "model",
            "body",
            "batching",
            "clients",
            "requests",
            "failed",
            "req/s",
            "p50 ms",
            "p99 ms",
            "p99/p50",
            "server CPU ms/req",
            "client CPU ms/req",
            "× throughput of batching off",
            "% of forward limit",
        ],
        rows,
    )
    report.table(
        "The forward pass alone (one torch thread), the service's overhead at one client (p50 latency − bare forward "
        "pass, first body form) and version swaps under load",
        [
            "model",
            "bare forward ms",
            "forward ms per input at batch 32",
            "forward limit req/s",
            "overhead ms",
            "failed during swaps",
        ],
        [
            (
                a,
                report.fmt(result.bare_forward_ms[a], 3),
                report.fmt(result.batched_ms_per_input[a], 3),
                report.fmt(result.forward_limit(a), 0),
                report.fmt(result.overhead.get(a), 2),
                result.swap_failures.get(a),
            )
            for a in result.bare_forward_ms
        ],
    )
    m = result.mixed
    if m:
        report.table(
            "Predictions at 32 clients while updates and promotions run",
            ["requests", "failed", "req/s", "p50 ms", "p99 ms", "updates", "promotions"],
            [
                (
                    m["requests"],
                    m["failed"],
                    report.fmt(m["throughput"], 0),
                    report.fmt(m["p50_ms"], 1),
                    report.fmt(m["p99_ms"], 1),
                    m["updates"],
                    m["promotions"],
                )
            ],
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "load.json").write_text(json.dumps(result.to_json(), indent=2))


def _load_capture(rate: float, rounds: int, requests: int, concurrency: int, out: Path | None) -> None:
    from clbench.traffic import measure_capture, spread_text

    with report.progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        result = measure_capture(rate, rounds, requests, concurrency, on_step=lambda s: bar.update(task, description=s))
        bar.update(task, description="done", total=1, completed=1)
    report.table(
        f"Capture {rate:g} of the traffic against none: {rounds} interleaved rounds of {requests} predictions at "
        f"{concurrency} clients (JSON, one input per request, batching on)",
        [
            "round",
            "order",
            "req/s off",
            "req/s on",
            "p50 ms off",
            "p50 ms on",
            "p99 ms off",
            "p99 ms on",
            "server CPU ms/req off",
            "server CPU ms/req on",
            "failed",
        ],
        [
            (
                i + 1,
                r.order,
                report.fmt(r.off_rps, 0),
                report.fmt(r.on_rps, 0),
                report.fmt(r.off_p50_ms, 2),
                report.fmt(r.on_p50_ms, 2),
                report.fmt(r.off_p99_ms, 2),
                report.fmt(r.on_p99_ms, 2),
                report.fmt(r.off_cpu_ms, 3),
                report.fmt(r.on_cpu_ms, 3),
                r.on_failed + r.off_failed,
            )
            for i, r in enumerate(result.rounds)
        ],
    )
    report.table(
        "Medians over the rounds (min–max)",
        ["capture", "req/s", "p50 ms", "p99 ms", "server CPU ms/req"],
        [
            (
                side,
                f"{result.median(side + '_rps'):.0f} ({spread_text(result.spread(side + '_rps'), 0)})",
                f"{result.median(side + '_p50_ms'):.2f} ({spread_text(result.spread(side + '_p50_ms'), 2)})",
                f"{result.median(side + '_p99_ms'):.2f} ({spread_text(result.spread(side + '_p99_ms'), 2)})",
                f"{result.median(side + '_cpu_ms'):.3f} ({spread_text(result.spread(side + '_cpu_ms'), 3)})",
            )
            for side in ("off", "on")
        ],
    )
    report.console.print(
        f"capture costs {100 * result.throughput_cost:.1f} % of the median throughput and adds "
        f"{100 * result.p99_cost:.1f} % to the median p99; stored captures {result.captured}"
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "load-capture.json").write_text(json.dumps(result.to_json(), indent=2))


@app.command()
def drift(
    windows: int = typer.Option(30, min=1, help="windows per shift and size"),
    sizes: str = typer.Option("50,100,200", help="comma-separated window sizes"),
    reference: int = typer.Option(500, min=10, help="held-out inputs in the reference (at most)"),
    permutations: int = typer.Option(200, min=99, help="permutations of the test (the service's default)"),
    alpha: float = typer.Option(0.01, min=0.0001, max=0.5, help="false-positive rate per window"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write drift.json into this folder"),
) -> None:
    """The drift test (`cl_core.drift`, as the service runs it) on the protocol MLP trained on digits 0-4: detection
    rate per shift type and window size; for "none" it is the false-positive rate."""
    from clbench.traffic import measure_drift, rate_text

    if threads:
        torch.set_num_threads(threads)
    try:
        window_sizes = [int(n) for n in sizes.split(",") if n]
    except ValueError:
        raise _fail(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    if not window_sizes or min(window_sizes) < 2:
        raise _fail("--sizes: windows of at least 2 inputs")
    from cl_core.drift import min_permutations

    if permutations < min_permutations(alpha):
        raise _fail(f"--permutations: at least {min_permutations(alpha)} for --alpha {alpha:g}")
    with report.progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        result = measure_drift(
            windows,
            window_sizes,
            reference=reference,
            permutations=permutations,
            alpha=alpha,
            on_step=lambda s: bar.update(task, description=s),
        )
        bar.update(task, description="done", total=1, completed=1)
    shifts = list(dict.fromkeys(c.shift for c in result.cells))
    by = {(c.shift, c.window): c for c in result.cells}
    report.table(
        f"Windows flagged as drift (α = {alpha:g}; reference: {result.reference} held-out digits 0-4; "
        f"{permutations} permutations; test accuracy of the MLP on 0-4: {result.test_accuracy:.3f})",
        ["shift", *[f"window {n}" for n in window_sizes], f"by features / by classes (window {window_sizes[-1]})"],
        [
            (
                shift,
                *[rate_text(by[shift, n].detected, by[shift, n].windows) for n in window_sizes],
                f"{by[shift, window_sizes[-1]].mmd_detected} / {by[shift, window_sizes[-1]].class_detected}",
            )
            for shift in shifts
        ],
    )
    report.console.print(
        "ms per test (window "
        + ", ".join(
            f"{n}: {statistics.median(c.ms_per_test for c in result.cells if c.window == n):.0f}" for n in window_sizes
        )
        + ")"
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "drift.json").write_text(json.dumps(result.to_json(), indent=2))


@app.command()
def distributed(
    repeats: int = typer.Option(5, help="repeats per snapshot size and per promotion (median reported)"),
    large: bool = typer.Option(True, help="include the 25M-parameter model (about 200 MB per snapshot)"),
    replicas: int = typer.Option(2, help="API replicas that must all serve a promoted version"),
    updates: int = typer.Option(8, help="updates per throughput measurement (1 and 2 workers)"),
    out: Path | None = typer.Option(None, help="write distributed.json into this folder"),
) -> None:
    """The distributed mode on loopback with its own redis-server: snapshot write/read vs model size, commit to
    all replicas serving, update throughput with 1 and 2 Celery workers."""
    from clbench.distributed import measure as measure_distributed

    with report.progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        result = measure_distributed(
            repeats=repeats,
            large=large,
            replicas=replicas,
            swaps=repeats,
            updates=updates,
            on_step=lambda s: bar.update(task, description=s),
        )
        bar.update(task, description="done", total=1, completed=1)
    report.table(
        "Snapshots in Redis: weights + one importance tensor per parameter (median)",
        ["model", "parameters", "MB", "chunks", "write s", "read s", "write MB/s"],
        [
            (
                r.model,
                f"{r.parameters:,}",
                report.fmt(r.bytes / 1e6, 1),
                r.chunks,
                report.fmt(r.write_s, 4),
                report.fmt(r.read_s, 4),
                report.fmt(r.write_mb_s, 0),
            )
            for r in result.snapshots
        ],
    )
    report.table(
        "From an update's commit to every replica serving it (protocol MLP; pub/sub, pointer re-read off)",
        ["replicas", "repeats", "commit s (median)", "commit → all serving s (median)", "slowest s"],
        [
            (r.replicas, r.repeats, report.fmt(r.commit_s, 4), report.fmt(r.all_serving_s, 4), report.fmt(r.slowest_s))
            for r in result.swaps
        ],
    )
    one = next((r for r in result.throughput if r.workers == 1), None)
    report.table(
        "Update throughput (protocol MLP, 200 digits per update, 10 epochs; one update per worker process)",
        ["workers", "updates", "seconds", "updates/min", "× one worker"],
        [
            (
                r.workers,
                r.updates,
                report.fmt(r.seconds, 1),
                report.fmt(r.per_minute, 1),
                report.fmt(r.per_minute / one.per_minute if one and one.per_minute else None, 2),
            )
            for r in result.throughput
        ],
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed.json").write_text(json.dumps(result.to_json(), indent=2))
        report.console.print(f"wrote {out / 'distributed.json'}")


@app.command()
def poison(
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds (the protocol: 0,1,2)"),
    case: str | None = typer.Option(None, help="only the cases whose name contains one of these (comma-separated)"),
    epochs: int | None = typer.Option(None, help="epochs per update (default: the service's CL_EPOCHS, 10)"),
    threads: int = typer.Option(0, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write poison.jsonl and poison.md into this folder"),
) -> None:
    """Poisoned labels against the forgetting gate: targeted relabels, partial flips (in one post and split over
    ten), label shuffles, and clean controls, on the protocol's data; promoted or not, quarantined, per-class test
    accuracy before and after."""
    from dataclasses import asdict

    from clbench.poison import markdown
    from clbench.poison import run as run_poison
    from worker.config import WorkerSettings

    if threads:
        torch.set_num_threads(threads)
    overrides: dict[str, object] = {"device": "cpu"}
    if epochs is not None:
        overrides["epochs"] = epochs
    settings = WorkerSettings(**overrides)  # type: ignore[arg-type]
    chosen = [int(s) for s in seeds.split(",") if s.strip()]
    only = [c.strip() for c in case.split(",")] if case else None

    def line(o: object) -> None:
        report.console.print(
            f"seed {o.seed} · {o.case}: {o.status}, promoted {o.promoted}, quarantined {o.quarantined} "  # type: ignore[attr-defined]
            f"({o.flipped_quarantined} of {o.flipped} flipped), {o.seconds:.1f} s"  # type: ignore[attr-defined]
        )

    outcomes = run_poison(chosen, settings, only=only, progress=line)
    table = markdown(outcomes)
    print(
        f"\n`clbench poison` — seeds {','.join(map(str, chosen))}, {settings.epochs} epochs per update, "
        f"service defaults otherwise\n"
    )
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "poison.jsonl").open("w") as f:
            for o in outcomes:
                f.write(json.dumps(asdict(o)) + "\n")
        (out / "poison.md").write_text(table + "\n")
        report.console.print(f"wrote {out / 'poison.jsonl'} and {out / 'poison.md'}")


@app.command()
def soak(
    updates: int = typer.Option(1000, min=1, help="successive updates per store"),
    samples: int = typer.Option(150, min=1, help="labeled samples posted before each update"),
    posts: int = typer.Option(100_000, min=0, help="one-sample posts of the backlog phase"),
    store: str = typer.Option("local,redis", help="stores to soak, comma-separated: local, redis"),
    epochs: int = typer.Option(1, min=1, help="epochs per update (the service's CL_EPOCHS)"),
    hidden: int = typer.Option(64, min=1, help="hidden units of the soaked MLP"),
    clients: int = typer.Option(4, min=1, help="client threads that build the backlog"),
    probe_every: int = typer.Option(25, min=1, help="updates between probes of the read endpoints"),
    probe_posts: int = typer.Option(100, min=1, help="sequential one-sample posts per backlog checkpoint (median)"),
    warmup: float = typer.Option(0.1, min=0, max=0.9, help="share of the points left out of each fit (warm-up)"),
    budget: float | None = typer.Option(None, min=1, help="seconds each store's updates phase may take at most"),
    setting: list[str] = typer.Option([], help="a CL_NAME=value setting for the service, repeatable"),
    out: Path | None = typer.Option(None, help="write soak.json and soak.png into this folder"),
) -> None:
    """A long run on each store: thousands of updates, then a backlog of one-sample posts; every figure's growth
    law (disk, update time, POST /updates, read endpoints' latency and size, post cost)."""
    from clbench.soak import STORES, SoakConfig, measure
    from clbench.soak_plot import soak_plot

    chosen = [s.strip() for s in store.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STORES]
    if unknown or not chosen:
        raise _fail(f"--store takes local and/or redis, got {store!r}")
    pairs = [s.split("=", 1) for s in setting]
    if any(len(p) != 2 or not p[0].startswith("CL_") for p in pairs):
        raise _fail("--setting takes CL_NAME=value")
    config = SoakConfig(
        updates=updates,
        samples=samples,
        posts=posts,
        clients=clients,
        probe_every=probe_every,
        probe_posts=probe_posts,
        hidden=hidden,
        epochs=epochs,
        env=tuple((k, v) for k, v in pairs),
    )
    with report.progress_bar() as bar:
        task = bar.add_task("starting", total=None)
        result = measure(config, chosen, on_step=lambda s: bar.update(task, description=s), budget_s=budget)  # type: ignore[arg-type]
        bar.update(task, description="done", total=1, completed=1)
    for soaked in result.stores:
        laws = soaked.growth(warmup)
        report.table(
            f"{soaked.store} store: {len(soaked.updates)} updates, then {soaked.posted:,} one-sample posts "
            f"({soaked.seconds:.0f} s)",
            ["figure", "over", "from", "first", "last", "last/first", "slope", "R²", "exponent", "law"],
            [
                (
                    name,
                    "backlog" if name.startswith("one-sample") else "versions",
                    f"{g.x_first:.0f}–{g.x_last:.0f}",
                    f"{g.first:.4g}",
                    f"{g.last:.4g}",
                    report.fmt(g.ratio, 2),
                    f"{g.slope:.3g}",
                    report.fmt(g.r2, 3),
                    report.fmt(g.exponent, 2),
                    g.law,
                )
                for name, g in laws.items()
            ],
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result.to_json(warmup), indent=2))
        soak_plot(result, out / "soak.png")
        report.console.print(f"wrote {out / 'soak.json'} and {out / 'soak.png'}")


@app.command()
def service(
    datasets: str = typer.Option("mnist5k,digits8x8", help="comma-separated: mnist5k, digits8x8"),
    architectures: str = typer.Option("mlp,cnn,lenet", help="comma-separated: mlp, cnn, lenet (operator-registered)"),
    memory: str = typer.Option("200,20", help="exemplars per class to run at (the service's default is 200)"),
    arms: str = typer.Option("fixed,adaptive", help="fixed (CL_TRAIN_BUDGET=epochs), adaptive (the defaults)"),
    seed: int = typer.Option(0, help="seed of the service's settings"),
    threads: int = typer.Option(1, help="torch threads (0: leave torch's default)"),
    out: Path | None = typer.Option(None, help="write service.jsonl and service.md into this folder"),
) -> None:
    """The service's own update path (worker pipeline, local store) on class-incremental sequences (classes 0-4,
    then 5-9) of packaged data sets and several architectures: fixed epochs and λ against the training budget and
    the choice per update, at two memory budgets, with joint training as the reference; old and new accuracy on a
    test split never posted, update wall time.  CL_ environment variables are ignored: the service's defaults."""
    import os
    from dataclasses import asdict

    from clbench.servicebench import markdown
    from clbench.servicebench import run as run_service

    for key in [k for k in os.environ if k.startswith("CL_")]:
        del os.environ[key]  # the service's defaults, whatever this shell exports
    if threads:
        torch.set_num_threads(threads)

    def line(r: object) -> None:
        report.console.print(
            f"{r.dataset} · {r.architecture} · {r.arm} · memory {r.memory_per_class}: {', '.join(r.statuses)}; "  # type: ignore[attr-defined]
            f"old {report.fmt(r.old_accuracy)}, new {report.fmt(r.new_accuracy)}, "  # type: ignore[attr-defined]
            f"all {report.fmt(r.accuracy)}; update {r.update_seconds:.1f} s"  # type: ignore[attr-defined]
        )

    runs = run_service(
        [d.strip() for d in datasets.split(",") if d.strip()],
        [a.strip() for a in architectures.split(",") if a.strip()],
        [int(m) for m in memory.split(",") if m.strip()],
        [a.strip() for a in arms.split(",") if a.strip()],
        seed,
        progress=line,
    )
    table = markdown(runs)
    print(f"\n`clbench service` — seed {seed}, {torch.get_num_threads()} torch thread(s), service defaults otherwise\n")
    print(table)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with (out / "service.jsonl").open("w") as f:
            for r in runs:
                f.write(json.dumps(asdict(r)) + "\n")
        (out / "service.md").write_text(table + "\n")
        report.console.print(f"wrote {out / 'service.jsonl'} and {out / 'service.md'}")


if __name__ == "__main__":
    app()
