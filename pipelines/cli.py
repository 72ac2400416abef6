"""The `dgrpo` command line: run, status, stop, unlock, compile, submit, schedule, lineage, report, contract."""

import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from dgrpo_pipelines.errors import OneLineErrors

from dgrpo import contracts
from dgrpo.config import ConfigError, load_config
from dgrpo.runtime.report import build_report, format_report, located_uri, save_report, summary_lines, write_html
from dgrpo.store import ArtifactRef, StoreError, check_store_uri, open_store
from dgrpo.toyworld.presets import PRESETS_DIR

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(help="DiverseGRPO fine-tuning pipelines for flow-matching text-to-image models.",
                  no_args_is_help=True, add_completion=True, cls=OneLineErrors, context_settings=HELP_OPTIONS)
contract_app = typer.Typer(help="The versioned data contracts between stages.", no_args_is_help=True,
                           context_settings=HELP_OPTIONS)
app.add_typer(contract_app, name="contract")
config_app = typer.Typer(help="The effective config of a run.", no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(config_app, name="config")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (errors too, on stderr).")]
HostOpt = Annotated[str, typer.Option(help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline.",
                                      envvar="KF_PIPELINES_ENDPOINT")]
StoreUriOpt = Annotated[str, typer.Option("--store", help="Artifact store URI the pods use (s3://... or file://).",
                                          envvar="DGRPO_STORE")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment.")]
NamespaceOpt = Annotated[str, typer.Option(help="Profile namespace of the experiment (multi-user Kubeflow).")]
TokenOpt = Annotated[str | None, typer.Option(help="Bearer token for the KFP API (default: $KF_PIPELINES_TOKEN, "
                                                   "else the mounted service-account token).",
                                              envvar="KF_PIPELINES_TOKEN")]


def _version(value: bool) -> None:
    if value:
        from dgrpo import __version__
        from dgrpo.runs.lineage import code_version

        typer.echo(f"dgrpo {__version__} (code {code_version()})")
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")] = False) -> None:
    """DiverseGRPO fine-tuning pipelines for flow-matching text-to-image models; the store of every command that
    reads one defaults to $DGRPO_STORE, else outputs/store."""


def _console(stream=None):  # type: ignore[no-untyped-def]
    """The progress console: on a terminal it wraps at its width; elsewhere (CI logs, kubectl logs) a line stays
    one line whatever its length."""
    from rich.console import Console

    stream = stream or sys.stdout
    return Console(file=stream, soft_wrap=not stream.isatty())


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))

DEFAULT_STORE = "outputs/store"
StoreOpt = Annotated[str, typer.Option("--store", help="Store URI (a directory or s3://bucket/prefix).",
                                       envvar="DGRPO_STORE")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML (default: the toy world).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config field: key.path=YAML value.")]
DEFAULT_RUN_CONFIG = PRESETS_DIR / "toy.yaml"
"""What `dgrpo run` trains without --config: the shipped toy preset (package data, so an installed wheel has it),
the one `make run` trains (one toy recipe, one name), not the bare field defaults, whose held-out split and learning
rate the presets correct."""
RunConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML (default: the shipped "
                                                                          "toy.yaml, package data).")]


def _overrides(items: list[str] | None) -> dict:
    """`--set key.path=value` options as dotted-key overrides, each value parsed as YAML; a key set twice (or twice
    inside one value) is refused, since only one of the two would count."""
    import yaml

    from dgrpo.config.loader import parse_yaml

    pairs = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: expected key.path=value")
        key, value = item.split("=", 1)
        if key in pairs:
            raise typer.BadParameter(f"--set {key!r} is given twice; give it once")
        try:
            pairs[key] = parse_yaml(value)
        except yaml.YAMLError as exc:
            raise typer.BadParameter(f"--set {key!r}: {' '.join(str(exc).split())}") from exc
    return pairs


def _config(config: Path | None, overrides: list[str] | None, require_import: bool = True):
    """The config, with its plug-in names and paths resolved (`require_import` False: compiling for images that
    may hold packages this machine lacks, which is then a warning)."""
    from dgrpo.runtime.checks import check_plugins

    try:
        cfg = load_config(config, _overrides(overrides))
        for warning in check_plugins(cfg, require_import):
            typer.echo(f"warning: {warning}", err=True)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return cfg


def _run_id(value: str | None, option: str) -> str | None:
    """A run id given on the command line, checked against the run-id character set."""
    from dgrpo.runs.keys import validate_run_id

    try:
        return None if value is None else validate_run_id(value, option)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def run(config: RunConfigOpt = None, set_: SetOpt = None,
        output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the run's store and logs.")
                          ] = Path("outputs"),
        store: Annotated[str | None, typer.Option(help="Artifact store URI (default: OUTPUT/store).",
                                                  envvar="DGRPO_STORE")] = None,
        engine: Annotated[str, typer.Option(help="kfp (kfp.local, the default) or inprocess.")] = "kfp",
        run_id: Annotated[str | None, typer.Option(help="Run id of a new fine-tune (default: name-timestamp).")
                          ] = None,
        resume: Annotated[str | None, typer.Option(help="Continue this fine-tune after its last committed round, "
                                                        "until `rounds` are done (with --run-id: branch from it).")
                          ] = None):
    """Train a fine-tune through the pipeline on this machine, segment by segment, and print where the results are."""
    from dgrpo_pipelines.local import ENGINES, new_run_id, open_context, run_pipeline
    from dgrpo_pipelines.progress import FineTuneProgress, stages_per_round

    from dgrpo.runs.commits import trained_state
    from dgrpo.runs.exchange import put_report_html
    from dgrpo.runtime.fine_tune import status as fine_tune_status

    if engine not in ENGINES:  # before anything is loaded or stored
        raise typer.BadParameter(f"{engine!r}: expected one of {', '.join(ENGINES)}", param_hint="--engine")
    if config is None and not DEFAULT_RUN_CONFIG.is_file():
        raise typer.BadParameter(f"no --config given and the default {DEFAULT_RUN_CONFIG} is missing (dgrpo is "
                                 "installed without its configs/ folder): pass --config", param_hint="--config")
    cfg = _config(config or DEFAULT_RUN_CONFIG, set_)
    run_id = _run_id(run_id, "--run-id") or _run_id(resume, "--resume") or new_run_id(cfg)
    store_uri = store or str((output / "store").resolve())
    ctx = open_context(cfg, store_uri, run_id)
    work_dir = output / "runs" / run_id
    typer.echo(f"dgrpo run {run_id}: {cfg.rounds} rounds in segments of {cfg.pipeline.rounds_per_run}, engine "
               f"{engine}, recipe {cfg.recipe_sha256()[:12]}")
    # only kfp.local writes task logs; the in-process engine's stages log here
    typer.echo(f"  store {ctx.store.uri}" + (f"; task logs {work_dir / 'kfp.log'}" if engine == "kfp" else ""))
    start = time.monotonic()
    console = _console()  # kfp.local's task logs are redirected away from it while the pipeline runs
    done = trained_state(ctx.store, run_id).next_round if resume else 0
    with FineTuneProgress(min(done, cfg.rounds), cfg.rounds, stages_per_round(cfg), console) as bar:
        def progress(_done: int, _total: int, event: dict) -> None:
            bar.set_rounds(event["fine_tune"]["rounds_done"], event["fine_tune"]["rounds_total"])
            bar.on_event(event)

        end = run_pipeline(ctx, store_uri, work_dir, engine, progress, resume or "")
    st = fine_tune_status(ctx.store, run_id)
    why = st["reason"] or end.error or "nothing to train"
    typer.echo(f"done in {time.monotonic() - start:.0f}s: {st['state']}, {why} ({st['segments']} segments)")
    typer.echo(f"  artifacts: {ctx.store.uri}")
    try:
        report = build_report(ctx.store, run_id)
    except ValueError:
        return
    markdown = save_report(ctx.store, run_id, report)
    html_path = write_html(ctx.store, [run_id], work_dir / "report.html")
    put_report_html(ctx.store, run_id, html_path.read_text(encoding="utf-8"))
    typer.echo(f"  report:    {ctx.store.uri}/{markdown}")
    typer.echo(f"  html:      {html_path.resolve()}")
    for line in summary_lines(report):
        typer.echo("  " + line)


@app.command()
def status(run_id: Annotated[str, typer.Argument(help="The fine-tune (run id).")],
           store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="Print it again every --interval seconds "
                                                                     "until the chain has ended.")] = False,
           interval: Annotated[float, typer.Option(help="Seconds between --watch readings.", min=0.1)] = 10.0,
           host: Annotated[str | None, typer.Option(
               help="KFP API endpoint of a cluster fine-tune: where a swapped component stopped it, its own last "
                    "error line is read from the pod log (and kept in the store, redacted).")] = None,
           namespace: NamespaceOpt = "", token: TokenOpt = None):
    """Rounds done, the current segment, the last error, a guard-rail stop and the best adapter of a fine-tune."""
    from dgrpo.runtime.fine_tune import format_status
    from dgrpo.runtime.fine_tune import status as fine_tune_status
    from dgrpo.runtime.listing import watch as watch_status

    st, run_id = open_store(store, "--store", create=False), _run_id(run_id, "run id")
    client = _client(host, namespace, token) if host else None

    def read() -> dict:
        team = ""
        if client is not None:  # before the status: the line it reads is kept as the run's last error
            from dgrpo_pipelines.remote import team_error

            team = team_error(client, st, run_id).removeprefix("; ")
        value = fine_tune_status(st, run_id)
        return value | {"team_error": team} if team else value

    def show(value: dict) -> None:
        if as_json:
            typer.echo(json.dumps(value, default=str) if watch else json.dumps(value, indent=2, default=str))
        else:
            text = format_status(value) + (f"\n  team:      {value['team_error']}" if "team_error" in value else "")
            typer.echo((time.strftime("%H:%M:%S ") if watch else "") + text)

    if watch:
        watch_status(read, show, interval)
    else:
        show(read())


@app.command("list")
def list_cmd(store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False):
    """The fine-tunes in a store: state, rounds done of total, segments, recorded errors, the best evaluation."""
    from dgrpo.runtime.listing import format_list, list_fine_tunes

    st = open_store(store, "--store", create=False)
    rows = list_fine_tunes(st)
    if as_json:
        _echo_json(rows)
    else:
        typer.echo(format_list(rows, st.uri))


@app.command()
def errors(run_id: Annotated[str, typer.Argument(help="The fine-tune (run id).")],
           store: StoreOpt = DEFAULT_STORE, as_json: JsonOpt = False):
    """Every error a fine-tune recorded (failed tasks, broken leases), oldest first; `status` shows the last."""
    from dgrpo.runtime.listing import format_errors, run_errors

    errs = run_errors(open_store(store, "--store", create=False), _run_id(run_id, "run id"))
    if as_json:
        _echo_json(errs)
    else:
        typer.echo(format_errors(errs, run_id))


@config_app.command("show")
def config_show(config: ConfigOpt = None, set_: SetOpt = None, as_json: JsonOpt = False,
                only_set: Annotated[bool, typer.Option("--only-set", help="Only the fields that differ from the "
                                                                          "defaults.")] = False):
    """The effective config after `base:` files and --set: each field's value, * where it is not the default
    (with the default), and its doc."""
    from dgrpo.runtime.config_view import config_fields, format_fields

    cfg = _config(config, set_, require_import=False)
    rows = config_fields(cfg)
    if as_json:
        _echo_json({"source": str(config or "defaults"), "recipe_sha256": cfg.recipe_sha256(),
                    "fields": [r for r in rows if not (only_set and r["is_default"])]})
    else:
        typer.echo(format_fields(rows, str(config or "the defaults"), cfg.recipe_sha256(), only_set))


@app.command()
def plan(config: Annotated[Path, typer.Argument(help="Run config YAML.")], set_: SetOpt = None,
         as_json: JsonOpt = False,
         gpu_seconds_per_image: Annotated[float | None, typer.Option(
             help="Measured GPU-seconds per training image (default: the SD3.5-M projection of docs/kubernetes.md, "
                  "0.50 images/GPU-s staged, 0.62 fused).", min=0.0)] = None):
    """Dry run: the fine-tune's segments with their tasks and pods, GPUs, estimated GPU-hours and store growth."""
    from dgrpo.runtime.dry_run import format_plan, make_plan, plan_dict

    cfg = _config(config, set_, require_import=False)
    result = make_plan(cfg, gpu_seconds_per_image)
    if as_json:
        _echo_json(plan_dict(result) | {"gpu_seconds_per_image_assumed": gpu_seconds_per_image is None})
    else:
        typer.echo(format_plan(result, str(config), assumed=gpu_seconds_per_image is None))


@app.command()
def stop(run_id: Annotated[str, typer.Argument(help="The fine-tune (run id).")],
         store: StoreOpt = DEFAULT_STORE,
         reason: Annotated[str, typer.Option(help="Why, for dgrpo status.")] = "",
         now: Annotated[bool, typer.Option("--now", help="Also terminate the running segment's KFP run (its round "
                                                         "in progress is lost) instead of letting it finish its "
                                                         "round.")] = False,
         host: Annotated[str | None, typer.Option(help="KFP API endpoint for --now (default: the chain's).",
                                                  envvar="KF_PIPELINES_ENDPOINT")] = None,
         namespace: Annotated[str, typer.Option(help="Profile namespace (multi-user Kubeflow).")] = "",
         token: Annotated[str | None, typer.Option(help="Bearer token for --now (default: $KF_PIPELINES_TOKEN).",
                                                   envvar="KF_PIPELINES_TOKEN")] = None):
    """Stop a fine-tune's chain: its running segment ends before its next round and submits no other; with --now
    its KFP run is terminated at once."""
    from dgrpo.runtime.fine_tune import chain_kfp, request_stop, terminate_current

    st = open_store(store, "--store")
    request_stop(st, _run_id(run_id, "run id"), reason)
    typer.echo(f"{run_id}: stop requested; `dgrpo run/submit --resume {run_id}` continues it later")
    if not now:
        return
    kfp = chain_kfp(st, run_id)
    if not (host or kfp.get("endpoint")):
        raise typer.BadParameter(f"fine-tune {run_id} was not submitted to KFP: nothing to terminate (the stop "
                                 "record ends a local run before its next round)", param_hint="--now")
    client = _client(host or kfp["endpoint"], namespace or kfp.get("namespace", ""), token)
    kfp_run, broken = terminate_current(st, run_id, client)
    if not kfp_run:
        typer.echo(f"{run_id}: no segment holds the fine-tune now; nothing to terminate")
        return
    typer.echo(f"{run_id}: terminated KFP run {kfp_run}" + (
        "; its exit task did not run, so its lease was broken and the segment recorded as stopped" if broken
        else "; its exit task records the stop (or the next resume breaks its lease once the run has ended)"))


@app.command()
def unlock(run_id: Annotated[str, typer.Argument(help="The fine-tune (run id).")],
           holder: Annotated[str, typer.Option(help="Holder id of the stale lease, as `dgrpo status` shows it.")],
           store: StoreOpt = DEFAULT_STORE):
    """Release the lease of a segment that died without its exit task (only that lease, by its holder id)."""
    from dgrpo.runtime.fine_tune import unlock as release

    if not release(open_store(store, "--store"), _run_id(run_id, "run id"), holder):
        raise RuntimeError(f"fine-tune {run_id}: lease {holder} is not held (already released, or another segment "
                           "holds the fine-tune now: see dgrpo status)")
    typer.echo(f"released lease {holder} of {run_id}; the next segment may start")


@app.command()
def compile(config: ConfigOpt = None, set_: SetOpt = None,
            output: Annotated[Path, typer.Option("--output", "-o", help="IR YAML path.")] = Path("pipeline.yaml")):
    """Write the KFP IR YAML of the segment pipeline for a cluster (its size does not depend on `rounds`)."""
    from dgrpo_pipelines.kubernetes import image_lines
    from dgrpo_pipelines.training import compile_pipeline

    cfg = _config(config, set_, require_import=False)
    path = compile_pipeline(cfg, output)
    typer.echo(f"wrote {path} (segments of up to {cfg.pipeline.rounds_per_run} rounds, recipe "
               f"{cfg.recipe_sha256()[:12]}); images:")
    typer.echo("\n".join(image_lines(cfg.kubernetes)))


def _client(host: str, namespace: str = "", token: str | None = None):
    from dgrpo.runtime.kfp_rest import KfpClient

    try:
        return KfpClient(host, token=token, namespace=namespace)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc


@app.command()
def submit(host: HostOpt, store: StoreUriOpt, config: ConfigOpt = None, set_: SetOpt = None,
           run_id: Annotated[str | None, typer.Option(help="Run id of a new fine-tune (default: name-timestamp).")
                             ] = None,
           resume: Annotated[str | None, typer.Option(help="Continue this fine-tune after its last committed round.")
                             ] = None,
           experiment: ExperimentOpt = "dgrpo", namespace: NamespaceOpt = "", token: TokenOpt = None):
    """Start a fine-tune on a KFP cluster: its first segment run, which submits the next until `rounds` are done."""
    from dgrpo_pipelines.kubernetes import image_lines
    from dgrpo_pipelines.local import new_run_id
    from dgrpo_pipelines.remote import submit as submit_run

    from dgrpo.runtime.kfp_rest import ui_url

    check_store_uri(store, "--store", require_scheme=True)  # before the KFP API sees it
    cfg = _config(config, set_, require_import=False)
    run_id = _run_id(run_id, "--run-id") or _run_id(resume, "--resume") or new_run_id(cfg)
    try:
        kfp_run = submit_run(_client(host, namespace, token), cfg, store, run_id, resume or "", experiment)
    except (ValueError, ConfigError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"submitted fine-tune {run_id} as KFP run {kfp_run} ({cfg.rounds} rounds in segments of "
               f"{cfg.pipeline.rounds_per_run}, recipe {cfg.recipe_sha256()[:12]}); images:")
    typer.echo("\n".join(image_lines(cfg.kubernetes)))
    typer.echo(f"KFP UI: {ui_url(host, kfp_run)}")
    typer.echo(f"follow it with: dgrpo status {run_id} --store {store}")


@app.command()
def schedule(host: HostOpt, store: StoreUriOpt,
             run_id: Annotated[str, typer.Option(help="The fine-tune every scheduled run continues.")],
             cron: Annotated[str, typer.Option(help="KFP cron, 6 fields: '0 0 2 * * *' is 02:00 daily.")],
             config: ConfigOpt = None, set_: SetOpt = None, experiment: ExperimentOpt = "dgrpo",
             namespace: NamespaceOpt = "", token: TokenOpt = None):
    """Create a recurring KFP run (max concurrency 1) whose runs each train the next segment of one fine-tune."""
    from dgrpo_pipelines.remote import schedule as schedule_run

    from dgrpo.runtime.kfp_rest import ui_url

    check_store_uri(store, "--store", require_scheme=True)  # before the KFP API sees it
    cfg = _config(config, set_, require_import=False)
    try:
        job = schedule_run(_client(host, namespace, token), cfg, store, _run_id(run_id, "--run-id"), cron,
                           experiment)
    except (ValueError, ConfigError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"scheduled {run_id}: recurring run {job}, cron '{cron}', {cfg.pipeline.rounds_per_run} rounds per "
               f"run until {cfg.rounds}\nKFP UI: {ui_url(host, job, recurring=True)}")


def _resolve(artifact: str, store: str | None):
    """An artifact given as a sha256, an object path/URI in a store, or a KFP artifact file holding a reference."""
    path = Path(artifact)
    if path.is_file() and path.stat().st_size < 4096 and path.read_bytes()[:1] == b"{":
        ref = ArtifactRef.from_json(path.read_text(), source=str(path))
        return open_store(store or ref.uri.split("/objects/")[0], "--store", create=False), ref.sha256
    if path.is_file() and "/objects/" not in artifact:
        raise typer.BadParameter(f"{artifact}: neither a Parquet table nor a KFP artifact file holding a dgrpo "
                                 "artifact reference")
    if "/objects/" in artifact:
        root, name = artifact.rsplit("/objects/", 1)
        return open_store(store or root, "--store", create=False), Path(name).name.split(".")[0]
    if not re.fullmatch(r"[0-9a-fA-F]{8,64}", artifact):
        if "/" in artifact or path.suffix:  # meant as a file: say so, not how to give a sha256
            raise typer.BadParameter(f"{artifact}: no such file")
        raise typer.BadParameter(f"{artifact!r}: expected a sha256 (64 hexadecimal digits, or the first 8 or more), "
                                 "an object path or a KFP artifact file")
    if store is None:
        raise typer.BadParameter("give --store when the artifact is a bare sha256")
    st = open_store(store, "--store", create=False)
    sha = artifact.lower()
    if len(sha) < 64:  # the 12-digit prefix `dgrpo lineage` and the report print
        found = sorted({Path(k).stem for k in st.list("lineage") if Path(k).name.startswith(sha)})
        if len(found) != 1:
            raise StoreError(f"artifact {sha}: {'no' if not found else len(found)} lineage records in {st.uri} "
                             f"start with it" + ("; give more digits" if found else ""))
        sha = found[0]
    return st, sha


@app.command("lineage")
def lineage_cmd(artifact: Annotated[str, typer.Argument(help="sha256, object path or KFP artifact file.")],
                store: Annotated[str | None, typer.Option(help="Store URI.", envvar="DGRPO_STORE")] = None,
                as_json: JsonOpt = False,
                verify: Annotated[bool, typer.Option(help="Read and hash every object shown; a corrupt or missing "
                                                          "one is flagged and the exit code is 1.")] = False,
                depth: Annotated[int, typer.Option(help="Levels of inputs to walk (an adapter's full chain is as "
                                                        "deep as its round).", min=0)] = 3):
    """Print the chain from an artifact (e.g. a LoRA adapter) back towards the base checkpoint and config."""
    from dgrpo.runtime.lineage_view import format_walk, pruned_in, split_problems, walk
    from dgrpo.runtime.pruned import pruned_index

    st, sha = _resolve(artifact, store)
    entries, cut = walk(st, sha, depth)
    pruned = pruned_index(st)
    problems, gone = split_problems(st, entries, pruned) if verify else ({}, pruned_in(st, entries, pruned))
    # each object where it is in this store now, not where a copied or moved store was when it was written
    entries = [(d, n, replace(r, uri=located_uri(st, ArtifactRef(kind=r.kind, uri=r.uri, sha256=r.sha256, size=0))))
               for d, n, r in entries]
    if as_json:
        notes = {sha: {"problem": p} for sha, p in problems.items()} | {sha: {"pruned": p} for sha, p in gone.items()}
        typer.echo(json.dumps([{"depth": d, "input": n, **vars(r), **notes.get(r.sha256, {})}
                               for d, n, r in entries], indent=2))
    else:
        typer.echo(format_walk(entries, problems, gone, cut, depth))
    if problems:
        raise StoreError(f"the chain of {sha[:12]} passes through {len(problems)} corrupt or missing objects "
                         f"(marked !!); `dgrpo verify` checks a whole run")


@app.command()
def verify(run_id: Annotated[str, typer.Argument(help="The run whose objects to check.")],
           store: StoreOpt = DEFAULT_STORE):
    """Check every object of a run against its lineage: present, whole (sha256), and the commits a chain."""
    from dgrpo.runtime.verify import pruned_lines, verify_run

    result = verify_run(open_store(store, "--store", create=False), _run_id(run_id, "run id"))
    for line in pruned_lines(result):
        typer.echo(f"pruned: {line}")
    for problem in result.problems:
        typer.echo(f"problem: {problem}")
    if result.problems:
        raise StoreError(result.summary())
    typer.echo(result.summary())


@app.command()
def gc(run_id: Annotated[str, typer.Argument(help="The fine-tune whose old rounds to prune.")],
       store: StoreOpt = DEFAULT_STORE,
       dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be deleted; delete nothing.")
                          ] = False,
       keep_rounds: Annotated[int | None, typer.Option(help="Keep the last N rounds' training outputs (default: "
                                                            "the run's retention.keep_rounds).", min=1)] = None,
       as_json: JsonOpt = False):
    """Delete what the run's retention policy lets go (old rounds' rollouts, scores, optimizer states), recorded
    first so verify and lineage report it as pruned; nothing another kept artifact of any run needs."""
    from dgrpo.runtime.retention import collect, format_plan, plan_gc

    st = open_store(store, "--store", create=False)
    plan = plan_gc(st, _run_id(run_id, "run id"), keep_rounds)
    record = None if dry_run else collect(st, plan)
    if as_json:
        _echo_json(plan.to_dict() | {"dry_run": dry_run, "record": record})
    else:
        typer.echo(format_plan(plan, dry_run) + (f"; recorded in {record}" if record else ""))


@app.command()
def report(run_ids: Annotated[list[str], typer.Argument(help="Run id; several overlay in one HTML report.")],
           store: StoreOpt = DEFAULT_STORE,
           html: Annotated[bool, typer.Option("--html", help="Write the self-contained HTML report.")] = False,
           output: Annotated[Path | None, typer.Option("--output", "-o", help="HTML file (default: "
                                                       "RUN[+RUN...].html here).")] = None):
    """Rebuild and print a run's markdown report, or write the HTML report of one or more runs."""
    st = open_store(store, "--store", create=False)
    if html:
        path = write_html(st, run_ids, output or Path("+".join(run_ids) + ".html"))
        typer.echo(f"wrote {path}")
        return
    for run_id in run_ids:
        typer.echo(format_report(build_report(st, _run_id(run_id, "run id"))))


@app.command()
def export(run_id: Annotated[str, typer.Argument(help="The fine-tune (run id).")],
           output: Annotated[Path, typer.Option("--output", "-o", help="New (or empty) folder to write.")],
           store: StoreOpt = DEFAULT_STORE,
           best: Annotated[bool, typer.Option("--best", help="The best evaluation's adapter (runs/RUN/best.json).")
                           ] = False,
           round_: Annotated[int | None, typer.Option("--round", help="The adapter after N rounds (evaluations' "
                                                                     "numbering; default: the last committed).")
                             ] = None,
           trained: Annotated[bool, typer.Option("--trained", help="The trained weights even where the recipe "
                                                                   "evaluates their EMA (default: what the "
                                                                   "evaluations scored).")] = False):
    """Write an adapter as a diffusers LoRA folder (`pipe.load_lora_weights(DIR)`) with a Hub model card."""
    from dgrpo.runtime.export import export as export_adapter

    if best and round_ is not None:
        raise typer.BadParameter("give --best or --round, not both", param_hint="--best")
    path, chosen = export_adapter(open_store(store, "--store", create=False), _run_id(run_id, "run id"), output,
                                  round_=round_, best=best, trained=trained)
    typer.echo(f"wrote {path}: the adapter after round {chosen.round} ({chosen.why}), "
               f"{chosen.adapter.sha256[:12]}; load it with pipe.load_lora_weights({str(path)!r})")


@contract_app.command("show")
def contract_show(name: Annotated[str | None, typer.Argument(help="Stage or contract name; all contracts when "
                                                                  "omitted.")] = None):
    """Print what a stage reads and writes, or the columns of the stage contracts."""
    from dgrpo.contracts.stages import STAGE_NAMES, describe_stage

    if name in STAGE_NAMES:
        typer.echo(describe_stage(name))
        return
    names = [name] if name else list(contracts.CONTRACTS)
    for n in names:
        if n not in contracts.CONTRACTS:
            raise typer.BadParameter(f"unknown stage or contract {n!r} (stages: {', '.join(STAGE_NAMES)}; contracts: "
                                     f"{', '.join(contracts.CONTRACTS)})")
        typer.echo(contracts.describe(contracts.CONTRACTS[n]) + "\n")


@contract_app.command("check")
def contract_check(target: Annotated[str, typer.Argument(help="Stage or contract name.")],
                   artifact: Annotated[str, typer.Argument(help="Parquet file, KFP artifact file, object path or "
                                                                "sha256 (with --store).")],
                   store: Annotated[str | None, typer.Option(help="Store URI.", envvar="DGRPO_STORE")] = None):
    """Validate an artifact, produced by any image, against a stage's or a contract's schema."""
    from dgrpo.contracts.stages import check_table

    path = Path(artifact)
    try:
        if path.is_file() and path.read_bytes()[:4] == b"PAR1":
            data, source = path.read_bytes(), str(path)
        else:
            st, sha = _resolve(artifact, store)
            data = st.get(ArtifactRef(kind="?", uri=_object_uri(st, sha), sha256=sha, size=0))
            source = f"artifact {sha}"
        contract, table = check_table(data, target, source)
    except (contracts.ContractError, StoreError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"ok: {source} is a valid {contract.name} v{contract.version} table ({table.num_rows} rows)")


def _object_uri(st, sha: str) -> str:
    keys = [k for k in st.list(f"objects/{sha[:2]}") if Path(k).name.startswith(sha)]
    if not keys:
        raise StoreError(f"artifact {sha}: not found in {st.uri}")
    return f"{st.uri.rstrip('/')}/{keys[0]}"


@app.command()
def experiment(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory for the store, tables, plot and reports.")
                      ] = Path("outputs/experiment-toy"),
    configs: Annotated[Path, typer.Option(help="Directory holding the toy presets (default: the shipped ones, "
                                               "package data).")] = PRESETS_DIR,
    seed: Annotated[list[int] | None, typer.Option(help="Seed of every arm (repeatable; 0-2 are tuning seeds, any "
                                                        "other an evaluation seed).")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help=(
        "Seed groups instead of --seed: tuning (0 1 2, the default), evaluation (3-7, which decide the goals) or "
        "all."))] = None,
    all_arms: Annotated[bool, typer.Option("--all-arms", help=(
        "Also run the paper's DiverseGRPO (no cluster baseline), DRIFT, Pro-GRPO and GARDO."))] = False,
    target_arms: Annotated[bool, typer.Option("--target-arms", help=(
        "Instead: the diversity-target comparison: Flow-GRPO, DiverseGRPO at beta 0.25 and 0.5, and the target "
        "at K 1, 3 and auto."))] = False,
    beta: Annotated[list[float] | None, typer.Option(help="Extra bonus-alone arm at this beta (repeatable).")] = None,
    jobs: Annotated[int, typer.Option(help="Runs trained at once, each in its own process.", min=1)] = 2,
    threads: Annotated[int, typer.Option(help="Torch threads per run.", min=1)] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the arms, their preset files and the seeds by "
                                                            "group; train nothing.")] = False,
    set_: SetOpt = None):
    """Toy reproduction: Flow-GRPO, SA-Reg, bonus alone, DiverseGRPO (x seeds) from one checkpoint, one budget."""
    from dgrpo_lab.arms import OPTIONAL_PRESETS, PRESETS, TARGET_PRESETS, build_arms, plan_lines
    from dgrpo_lab.seeds import DEFAULT_SEEDS, seeds_for

    if seed and seeds:
        raise typer.BadParameter("give --seed (the seeds themselves) or --seeds (a group), not both")
    try:
        chosen = tuple(seed) if seed else seeds_for(seeds) if seeds else DEFAULT_SEEDS
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if all_arms and target_arms:
        raise typer.BadParameter("give --all-arms or --target-arms, not both")
    presets = TARGET_PRESETS if target_arms else PRESETS | OPTIONAL_PRESETS if all_arms else PRESETS
    overrides = _overrides(set_)
    start = time.monotonic()
    try:
        if dry_run:
            for line in plan_lines(build_arms(configs, beta or [], overrides, presets), chosen, configs, presets):
                typer.echo(line)
            return
        from dgrpo_lab.run import run_experiment

        paths = run_experiment(output, config_dir=configs, betas=beta or [], overrides=overrides, log=typer.echo,
                               jobs=jobs, threads=threads, seeds=chosen, presets=presets)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"done in {time.monotonic() - start:.0f}s")
    for kind, path in paths.items():
        typer.echo(f"  {kind:<12} {path}")
