"""`learnloop versions` (the registry) and `learnloop export`."""

from __future__ import annotations

import json
from typing import Any

import click

from learnloop.cli.main import echo_json, settings


def _db() -> Any:
    from learnloop.store import open_database

    s = settings()
    return s, open_database(s)


@click.group("versions")
def versions_group() -> None:
    """Model versions: register adapters, promote, roll back, restore, delete, compare, trace lineage."""


@versions_group.command("list")
@click.option("--loop", help="Only versions of this loop.")
@click.option(
    "--state",
    type=click.Choice(["candidate", "serving", "archived", "rejected"]),
    help="Only versions in this state.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(loop: str | None, state: str | None, as_json: bool) -> None:
    """Every version, newest first."""
    from learnloop.registry import list_versions

    _, db = _db()
    versions = list_versions(db, loop=loop, state=state)
    if as_json:
        echo_json([v.as_dict() for v in versions])
        return
    if not versions:
        click.echo("no versions yet: `learnloop versions create --from RUN_DIR`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for col in ("id", "state", "aliases", "parent", "algorithm", "loss", "gate", "created", "note"):
        table.add_column(col)
    for v in versions:
        loss = v.metrics.get("final_loss")
        table.add_row(
            v.id,
            v.state + ("" if v.artifact_path else " (pruned)"),
            ",".join(v.aliases),
            v.parent_id or "",
            v.algorithm or "",
            f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
            v.gate.get("verdict", ""),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.note or "",
        )
    Console().print(table)


@versions_group.command("show")
@click.argument("version_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(version_id: str, as_json: bool) -> None:
    """One version: lineage (dataset, config, base, adapter hashes), metrics, gate verdict, promotions."""
    from learnloop.registry import lineage

    _, db = _db()
    chain = lineage(db, version_id, depth=0 if not as_json else 20)
    if as_json:
        echo_json(chain)
        return
    _print_chain(chain)


def _print_chain(chain: dict[str, Any]) -> None:
    v, d, t, b, a = (
        chain["version"],
        chain["dataset"],
        chain["training"],
        chain["base_model"],
        chain["adapter"],
    )
    click.echo(f"{v['id']}  state {v['state']}  loop {v.get('loop') or '-'}  created {v['created_at']}")
    if v.get("note"):
        click.echo(f"  note: {v['note']}")
    click.echo(
        f"  dataset:   id {d['id']}  sha256 {d['sha256'] or '-'}  {d.get('kind') or ''} "
        f"{d.get('count') or ''}".rstrip()
    )
    if d.get("filters"):
        window = {
            k: d["filters"].get(k) for k in ("since", "until", "window_id", "scenario") if d["filters"].get(k)
        }
        click.echo(f"             capture window {json.dumps(window, default=str)}")
    click.echo(
        f"  training:  {t['algorithm'] or '-'}  job {t['job_id'] or '-'}  metrics "
        + json.dumps({k: v for k, v in t["metrics"].items() if k != "eval_curve"}, default=str)
    )
    click.echo(f"  base:      {b['spec']}  sha256 {b['sha256']}")
    click.echo(f"  adapter:   sha256 {a['sha256']}  {a['path'] or '(files pruned)'}")
    for ev in chain["evaluations"]:
        ci = ev.get("reward_diff_ci") or [None, None]
        ci_text = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if None not in ci else "n/a"
        click.echo(
            f"  eval {ev['id']}:   vs {ev['baseline']}  n={ev['n']}  diff {ev['reward_diff']}  95% CI "
            f"{ci_text}  -> {ev['verdict']}"
        )
    if chain["gate"]:
        click.echo(
            f"  gate:      {chain['gate'].get('verdict')}: {'; '.join(chain['gate'].get('reasons', []))}"
        )
    for m in chain["promotions"]:
        click.echo(
            f"  {m['at']}  {m['alias']}: {m['from'] or 'base'} -> {m['to'] or 'base'} "
            f"({m['action']}) by {m['actor']}: {m['reason']}"
        )
    if chain.get("parent"):
        click.echo(
            f"  parent:    {chain['parent']['version']['id']} (`learnloop versions lineage {v['id']}` "
            "for the whole chain)"
        )


@versions_group.command("lineage")
@click.argument("version_id", required=False)
@click.option(
    "--trajectory", "trajectory_id", help="Start from a served answer (a trajectory id) instead of a version."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def lineage_cmd(version_id: str | None, trajectory_id: str | None, as_json: bool) -> None:
    """The chain from a version (or a served answer) back to its data, through every parent."""
    from learnloop.registry import lineage, trace_trajectory

    if bool(version_id) == bool(trajectory_id):
        raise click.UsageError("give a VERSION_ID or --trajectory ID (one of them).")
    _, db = _db()
    data = trace_trajectory(db, trajectory_id) if trajectory_id else {"lineage": lineage(db, version_id)}
    if as_json:
        echo_json(data)
        return
    if trajectory_id:
        t = data["trajectory"]
        click.echo(
            f"trajectory {t['id']} ({t['source']}, {t['created_at']}) answered by "
            f"{t['model_version'] or 'an unknown model'}"
        )
        if data["lineage"] is None:
            click.echo(data["note"])
            return
    chain = data["lineage"]
    while chain:
        _print_chain(chain)
        chain = (
            chain.get("parent") if chain.get("parent", {}) and "dataset" in chain.get("parent", {}) else None
        )


@versions_group.command("create")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A training run folder (with adapter/) or a LoRA adapter folder.",
)
@click.option(
    "--base-model", help="Base it was trained on (default: the run's config, then training.base_model)."
)
@click.option(
    "--parent", "parent_id", help="The version it continued (found from the run's init_adapter when omitted)."
)
@click.option("--dataset", "dataset_id", type=int, help="Id of the recorded dataset it was trained on.")
@click.option("--loop", help="The loop it belongs to.")
@click.option("--name", help="A name to remember it by.")
@click.option("--note", help="A note stored with it.")
@click.option("--json", "as_json", is_flag=True, help="Print the version as JSON.")
def create_cmd(
    source: str,
    base_model: str | None,
    parent_id: str | None,
    dataset_id: int | None,
    loop: str | None,
    name: str | None,
    note: str | None,
    as_json: bool,
) -> None:
    """Register an adapter as a new immutable version (refused, with the reason,
    if its base does not match)."""
    from learnloop.registry import get_version, local_actor, register_version

    s, db = _db()
    vid = register_version(
        db,
        s,
        adapter_dir=source,
        base_model=base_model,
        parent_id=parent_id,
        dataset_id=dataset_id,
        loop=loop,
        name=name,
        note=note,
        actor=local_actor(),
    )
    info = get_version(db, vid)
    if as_json:
        echo_json(info.as_dict())
        return
    click.echo(f"registered {vid}: adapter sha256 {info.adapter_sha256} at {info.artifact_path}")


@versions_group.command("promote")
@click.argument("version_id")
@click.option("--alias", default="learnloop", show_default=True, help="The served name to move.")
@click.option("--reason", help="Why (kept in the alias log).")
@click.option(
    "--evaluation",
    "evaluation_id",
    type=int,
    help="The evaluation this rests on (default: the version's latest gate verdict).",
)
@click.option("--force", is_flag=True, help="Promote even without a passing gate verdict (logged as forced).")
def promote_cmd(
    version_id: str, alias: str, reason: str | None, evaluation_id: int | None, force: bool
) -> None:
    """Serve VERSION_ID (or 'base') under ALIAS. Running servers switch to it on their next poll."""
    from learnloop.registry import local_actor, promote

    s, db = _db()
    result = promote(
        db,
        s,
        version_id,
        alias=alias,
        actor=local_actor(),
        reason=reason,
        evaluation_id=evaluation_id,
        force=force,
    )
    if not result["changed"]:
        click.echo(f"{alias} already serves {version_id}")
    else:
        click.echo(f"{alias}: {result['previous'] or 'base'} -> {version_id} ({result['action']})")


@versions_group.command("rollback")
@click.option("--alias", default="learnloop", show_default=True)
@click.option("--reason", help="Why (kept in the alias log).")
def rollback_cmd(alias: str, reason: str | None) -> None:
    """Serve what ALIAS served before the current version (again: one further back)."""
    from learnloop.registry import local_actor, rollback

    s, db = _db()
    target = rollback(db, s, alias=alias, actor=local_actor(), reason=reason)
    click.echo(f"{alias} now serves {target or 'the base model'}")


@versions_group.command("restore")
@click.argument("version_id")
@click.option("--loop", help="The loop whose next training continues from it (default: the version's loop).")
@click.option("--serve", is_flag=True, help="Also serve it.")
@click.option("--force", is_flag=True, help="With --serve: serve it even if the gate rejected it.")
@click.option("--reason", help="Why (kept in the alias log with --serve).")
def restore_cmd(version_id: str, loop: str | None, serve: bool, force: bool, reason: str | None) -> None:
    """Make VERSION_ID the head the next training continues from (its files checked byte for byte)."""
    from learnloop.registry import local_actor, restore

    s, db = _db()
    r = restore(db, s, version_id, loop=loop, serve=serve, actor=local_actor(), force=force, reason=reason)
    where = f"loop {r.loop}" if r.loop else "the registry"
    click.echo(f"{version_id} is the head of {where}; files verified at {r.adapter_path}")
    if not r.loop:
        click.echo(f"continue from it with: learnloop train run --init-adapter {r.adapter_path} ...")
    if r.served:
        click.echo(f"{version_id} is now served")


@versions_group.command("delete")
@click.argument("version_id")
@click.option(
    "--force",
    is_flag=True,
    help="Delete even a loop head, a parent of other versions, or files that fail their hash check.",
)
def delete_cmd(version_id: str, force: bool) -> None:
    """Delete a version's record and files (never one an alias serves)."""
    from learnloop.registry import delete_version, local_actor

    s, db = _db()
    delete_version(db, s, version_id, force=force, actor=local_actor())
    click.echo(f"deleted {version_id}")


@versions_group.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diff_cmd(a: str, b: str, as_json: bool) -> None:
    """Config, dataset, metrics and evaluation differences between versions A and B."""
    from learnloop.registry import diff_versions

    _, db = _db()
    d = diff_versions(db, a, b)
    if as_json:
        echo_json(d)
        return
    click.echo(f"{'':28} {a:>24} {b:>24}")
    for section in ("fields", "config", "metrics", "gate"):
        if d[section]:
            click.echo(f"[{section}]")
        for key, (x, y) in d[section].items():
            click.echo(f"  {key:26} {_short(x):>24} {_short(y):>24}")
    ea, eb = d["evaluation"]
    click.echo("[latest evaluation]")
    for key in ("id", "baseline", "n", "reward_candidate", "reward_diff", "verdict"):
        click.echo(f"  {key:26} {_short((ea or {}).get(key)):>24} {_short((eb or {}).get(key)):>24}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    text = "-" if value is None else str(value)
    return text if len(text) <= 24 else text[:11] + "…" + text[-11:]


@versions_group.command("history")
@click.option("--alias", help="Only this alias.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history_cmd(alias: str | None, as_json: bool) -> None:
    """The alias log: every promote, rollback, forced move and restore, newest first."""
    from learnloop.registry import alias_history

    _, db = _db()
    rows = alias_history(db, alias)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['at']}  {r['alias']}: {r['from'] or 'base'} -> {r['to'] or 'base'} ({r['action']}) "
            f"by {r['actor']}{' eval ' + str(r['evaluation_id']) if r['evaluation_id'] else ''}: "
            f"{r['reason'] or ''}"
        )


@click.command("export")
@click.argument("version_id")
@click.option(
    "--format", "fmt", type=click.Choice(["merged", "gguf", "ollama"]), default="merged", show_default=True
)
@click.option(
    "--quant",
    type=click.Choice(["f32", "f16", "q8_0"]),
    default="q8_0",
    show_default=True,
    help="GGUF tensor type.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder to write (default: <data dir>/exports/<version>-<format>).",
)
@click.option("--name", help="Ollama model name (default: learnloop-<version>).")
def export_cmd(version_id: str, fmt: str, quant: str, out_dir: str | None, name: str | None) -> None:
    """Export VERSION_ID: merged safetensors, a GGUF file, or an Ollama Modelfile
    (+ `ollama create` when installed)."""
    from learnloop.registry import export_version

    s, db = _db()
    result = export_version(db, s, version_id, fmt=fmt, out=out_dir, quant=quant, ollama_name=name)
    click.echo(f"{fmt} export of {version_id} written to {result.path}")
    if result.ollama_command:
        if result.ollama_created:
            click.echo(f"ollama model created: {result.ollama_name}")
        else:
            click.echo(f"ollama is not on PATH; to create the model run:\n  {result.ollama_command}")
