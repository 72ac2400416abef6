"""The markdown run report and terminal summary, and the markdown view of one evaluation (a KFP Markdown
visualisation), built from the records the stages write in the store."""


from dgrpo.runs import evaluations
from dgrpo.runs.exchange import put_report
from dgrpo.runs.keys import after_round, evaluation_label
from dgrpo.runs.records import EvalRecord, Event
from dgrpo.store import ArtifactRef, ArtifactStore, StoreError

SHOWN = ("reward", "quality", "mode_entropy", "modes_over_10pct", "diversity", "embedding_diversity", "vendi")


def load_events(store: ArtifactStore, run_id: str) -> list[Event]:
    return evaluations.events(store, run_id)


def located_uri(store: ArtifactStore, ref: dict | ArtifactRef) -> str:
    """Where `ref`'s object is in `store` now. Records keep the URI an object was written at, which in a store
    copied or moved elsewhere points at the old copy; an object outside the store (the base weights) keeps its URI."""
    if isinstance(ref, dict):
        ref = ArtifactRef(kind=str(ref.get("kind", "?")), uri=ref["uri"], sha256=ref["sha256"],
                          size=int(ref.get("size", 0)))
    try:
        return f"{store.uri.rstrip('/')}/{store.key_of(ref)}"
    except StoreError:
        return ref.uri


def build_report(store: ArtifactStore, run_id: str) -> dict:
    """The run's report, read from its records and written nowhere (`save_report` stores it): `dgrpo report` reads
    a store it may not write, a read-only mount or a copy. Object URIs are where the objects are in `store` now."""
    events = load_events(store, run_id)
    evals = [e for e in events if e.stage == "evaluate"]
    if not evals:
        raise ValueError(f"run {run_id}: no evaluation recorded in {store.uri}")
    rewards = round_means([e for e in events if e.stage == "reward"])
    updates = [e for e in events if e.stage == "update"]
    from dgrpo.runtime.report.headline import build_headline, run_config  # headline reads configs: not at import

    config = run_config(store, run_id)
    headline = build_headline(store, run_id, [e.metrics for e in evals], config)
    eval_record = evaluations.read_evaluation(store, run_id, evals[-1].round)
    report = {
        "run_id": run_id, "store": store.uri, "headline": headline.line(), "verdict": headline.verdict,
        "rewards": {"training": config.reward.name if config is not None else None,
                    "evaluation": eval_record.reward if eval_record else None},
        "evaluations": [{"round": e.round, **e.metrics, "grid": located_uri(store, e.output("grid"))}
                        for e in evals],
        "training_reward_by_round": rewards,
        "first": {"round": evals[0].round, **evals[0].metrics},
        "last": {"round": evals[-1].round, **evals[-1].metrics},
        "final_adapter": _located(store, updates[-1].outputs["adapter"]) if updates else None,
    }
    return report


def _located(store: ArtifactStore, ref: dict) -> dict:
    return ref | {"uri": located_uri(store, ref)}


def save_report(store: ArtifactStore, run_id: str, report: dict) -> str:
    """Store the report as `runs/<run>/report.json` and `report.md` (by the run, which owns its store); returns
    the markdown's key."""
    return put_report(store, run_id, data=report, markdown=format_report(report))


def round_means(reward_events: list[Event]) -> dict[int, float]:
    """Mean training reward per round, weighting a sharded round's shards by their sample counts."""
    return {r: m["reward_mean"] for r, m in round_metric_means(reward_events, {"reward_mean"}).items()}


def round_metric_means(reward_events: list[Event], names: set[str]) -> dict[int, dict[str, float]]:
    """Per round, the mean of each of `names` the reward events report, weighting a sharded round's shards by their
    sample counts."""
    sums: dict[int, dict[str, list[float]]] = {}
    for e in reward_events:
        n = e.metrics.get("samples", 1.0)
        for name in names & set(e.metrics):
            acc = sums.setdefault(e.round, {}).setdefault(name, [0.0, 0.0])
            acc[0] += e.metrics[name] * n
            acc[1] += n
    return {r: {name: total / n for name, (total, n) in by_name.items()} for r, by_name in sums.items()}


def format_report(report: dict) -> str:
    rewards = report.get("rewards") or {}
    lines = [f"# dgrpo run {report['run_id']}", ""]
    if report.get("headline"):
        lines += [f"**{report['headline']}**", ""]
    lines += ["| evaluation | " + " | ".join(SHOWN) + " |", "|---|" + "---|" * len(SHOWN)]
    for e in report["evaluations"]:
        lines.append(f"| {evaluation_label(e['round'])} | "
                     + " | ".join(f"{e[k]:.3f}" if k in e else "-" for k in SHOWN) + " |")
    evaluation = rewards.get("evaluation")
    lines += ["", f"Evaluation reward: `{evaluation['name']}`: {evaluation['why']}." if evaluation
              else "Evaluation reward: not recorded (a run older than the record)."]
    training = f"`{rewards['training']}` (reward.name)" if rewards.get("training") else "the training reward"
    # rounds shown from 1: the reward of round k is that of the rollouts the k-th update trained on
    lines += ["", f"Training reward {training}, mean over the round's rollouts: "
              + ", ".join(f"round {int(r) + 1}: {v:.3f}" for r, v in sorted(report["training_reward_by_round"].items(),
                                                                          key=lambda kv: int(kv[0])))]
    if evaluation and rewards.get("training") and evaluation["name"] != rewards["training"]:
        lines += ["", f"The evaluation table used another reward (`{evaluation['name']}`) than training "
                      f"(`{rewards['training']}`): the two are not on one scale."]
    if report["final_adapter"]:
        lines += ["", f"Final LoRA adapter: {report['final_adapter']['uri']}",
                  f"Lineage: dgrpo lineage {report['final_adapter']['sha256']} --store {report['store']}"]
    lines += ["", "Image grids:"] + [f"- {evaluation_label(e['round'])}: {e['grid']}" for e in report["evaluations"]]
    return "\n".join(lines) + "\n"


def summary_lines(report: dict) -> list[str]:
    def fmt(point: dict) -> str:
        return ", ".join(f"{k} {point[k]:.3f}" for k in SHOWN if k in point)

    lines = [f"first ({evaluation_label(report['first']['round'])}): {fmt(report['first'])}",
             f"last  ({evaluation_label(report['last']['round'])}): {fmt(report['last'])}"]
    return lines + ([f"verdict: {report['verdict']}"] if report.get("verdict") else [])


SPLIT_COLUMNS = (("all prompts", ""), ("held-out", "heldout_"), ("training", "train_"))


def evaluation_markdown(record: EvalRecord) -> str:
    """One evaluation (`dgrpo.runs.evaluations`) as Markdown: the measures by prompt split, then per prompt, and
    which reward scored it."""
    metrics = record.metrics
    keys = [k for k in SHOWN if k in metrics]
    splits = [(name, prefix) for name, prefix in SPLIT_COLUMNS if any(prefix + k in metrics for k in keys)]
    # the heading keeps the rounds-done number (KFP's Markdown view is parsed by it); round 0 is named as the base
    lines = [f"## Evaluation {after_round(record.round) if record.round else 'of the base model'}", "",
             *(["The base model: no training round done yet.", ""] if record.round == 0 else []),
             "| measure | " + " | ".join(name for name, _ in splits) + " |", "|---|" + "---|" * len(splits)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{metrics[p + k]:.4f}" if p + k in metrics else "-"
                                              for _, p in splits) + " |")
    per_keys = [k for k in SHOWN if record.per_prompt and k in record.per_prompt[0]]
    lines += ["", "| prompt | held out | " + " | ".join(per_keys) + " |", "|---|---|" + "---|" * len(per_keys)]
    for row in record.per_prompt:
        prompt = str(row["prompt"]).replace("|", "\\|")
        lines.append(f"| {prompt} | {'yes' if row['held_out'] else 'no'} | "
                     + " | ".join(f"{row[k]:.4f}" for k in per_keys) + " |")
    if record.reward:
        lines += ["", f"Reward: `{record.reward['name']}`: {record.reward['why']}."]
    if record.grid is not None:
        lines += ["", f"Image grid: {record.grid.uri}"]
    return "\n".join(lines) + "\n"
