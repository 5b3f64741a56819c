"""`learnloop eval`: run, show, list and compare evaluations."""

from __future__ import annotations

from typing import Any

import click

from learnloop.cli.main import echo_json, settings


@click.group("eval")
def eval_group() -> None:
    """Evaluate a version against the model in service (or base, a version, the teacher) on held-out data."""


def _num(x: Any, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def _print_side_by_side(m: dict[str, Any], left: str, right: str) -> None:
    rows = [
        ("mean reward", m.get("reward_candidate"), m.get("reward_baseline")),
        ("JSON valid", m.get("json_valid_candidate"), m.get("json_valid_baseline")),
        ("refusal rate", m.get("refusal_rate_candidate"), m.get("refusal_rate_baseline")),
        ("answer chars", m.get("length_chars_candidate"), m.get("length_chars_baseline")),
        ("latency p50 ms", m.get("latency_p50_candidate_ms"), m.get("latency_p50_baseline_ms")),
        ("latency p95 ms", m.get("latency_p95_candidate_ms"), m.get("latency_p95_baseline_ms")),
        ("cost/1k requests", m.get("cost_per_1k_requests_candidate"), m.get("cost_per_1k_requests_baseline")),
    ]
    click.echo(f"  {'':16} {left:>12} {right:>12}")
    for label, a, b in rows:
        click.echo(f"  {label:16} {_num(a):>12} {_num(b):>12}")
    ci = m.get("reward_diff_ci") or [None, None]
    click.echo(
        f"  paired diff {_num(m.get('reward_diff'), '+.4f')}  95% CI [{_num(ci[0], '+.4f')}, "
        f"{_num(ci[1], '+.4f')}]  win/tie/loss {m.get('wins')}/{m.get('ties')}/{m.get('losses')}  "
        f"n={m.get('n')}"
    )
    aspects = m.get("aspects") or {}
    if aspects:
        click.echo(f"  {'aspect':16} {left:>12} {right:>12} {'paired diff':>12} {'95% CI':>17}")
    for name, a in aspects.items():
        aci = a.get("diff_ci") or [None, None]
        ci_text = f"[{_num(aci[0], '+.3f')}, {_num(aci[1], '+.3f')}]" if "diff_ci" in a else ""
        click.echo(
            f"  {name[:16]:16} {_num(a.get('candidate')):>12} {_num(a.get('baseline')):>12} "
            f"{_num(a.get('diff'), '+.4f'):>12} {ci_text:>17}  n={a.get('n')}"
        )
    j = m.get("judge")
    if j:
        jci = j.get("win_rate_ci") or [None, None]
        click.echo(
            f"  judge win rate {_num(j.get('win_rate'), '.3f')} [{_num(jci[0], '.3f')}, "
            f"{_num(jci[1], '.3f')}]  consistent in both orders {_num(j.get('consistency'), '.0%')}  "
            f"failed {j.get('failed')}"
        )


def _print_evaluation(ev: dict[str, Any], examples: int) -> None:
    click.echo(
        f"evaluation {ev['id']}: {ev['candidate']} vs {ev['baseline']}"
        f"{' scenario ' + ev['scenario'] if ev['scenario'] else ''} ({ev['created_at']})"
    )
    _print_side_by_side(ev["metrics"].get("overall", {}), ev["candidate"], ev["baseline"])
    scenarios = ev["metrics"].get("scenarios", {})
    if len(scenarios) > 1:
        for name, m in scenarios.items():
            click.echo(
                f"  [{name}] n={m['n']} reward {_num(m['reward_candidate'])} vs {_num(m['reward_baseline'])} "
                f"diff {_num(m['reward_diff'], '+.4f')}"
            )
    click.echo(f"gate: {ev['verdict']}")
    for reason in ev["gate"].get("reasons", []):
        click.echo(f"  - {reason}")
    worst = sorted(ev.get("examples", []), key=lambda e: e.get("diff") or 0.0)[:examples]
    if worst:
        click.echo("examples where the candidate lost most:")
    for e in worst:
        click.echo(f"  {e['id']} ({_num(e['diff'], '+.3f')}): {e['prompt'][:80]!r}")
        click.echo(f"    candidate: {e['candidate']['text'][:120]!r}")
        click.echo(f"    baseline:  {e['baseline']['text'][:120]!r}")


@eval_group.command("run")
@click.option("--candidate", required=True, help="The version to evaluate.")
@click.option(
    "--baseline", default="serving", show_default=True, help="serving, base, a version id, or teacher."
)
@click.option("--scenario", help="Only this scenario's held-out examples.")
@click.option("--limit", type=click.IntRange(min=1), help="Most held-out examples to use.")
@click.option(
    "--judge/--no-judge",
    default=None,
    help="Also ask the LLM judge, in both orders (default: evaluation.judge).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stored evaluation as JSON.")
def run_cmd(
    candidate: str, baseline: str, scenario: str | None, limit: int | None, judge: bool | None, as_json: bool
) -> None:
    """Generate held-out answers with CANDIDATE and the baseline, score them,
    apply the gate, store the result."""
    from learnloop.evaluation import evaluate, get_evaluation
    from learnloop.store import open_database

    s = settings()
    db = open_database(s)

    def progress(done: int, total: int) -> None:
        if not as_json:
            click.echo(f"\r{done}/{total} examples", nl=done == total, err=True)

    ev_id = evaluate(
        db,
        s,
        candidate=candidate,
        baseline=baseline,
        scenario=scenario,
        limit=limit,
        judge=judge,
        progress=progress,
    )
    ev = get_evaluation(db, ev_id, examples=not as_json)
    if as_json:
        echo_json(ev)
        return
    _print_evaluation(ev, 3)


@eval_group.command("show")
@click.argument("evaluation", required=False)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many losing examples to print.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with every example).")
def show_cmd(evaluation: str | None, examples: int, as_json: bool) -> None:
    """An evaluation (by id, or a version id for its latest; default: the newest)."""
    from learnloop.evaluation import get_evaluation, list_evaluations, resolve_evaluation
    from learnloop.store import open_database

    db = open_database(settings())
    if evaluation is None:
        latest = list_evaluations(db, limit=1)
        if not latest:
            raise click.ClickException("no evaluations yet: `learnloop eval run --candidate V`")
        ev_id = latest[0]["id"]
    else:
        ev_id = resolve_evaluation(db, evaluation)
    ev = get_evaluation(db, ev_id)
    if as_json:
        echo_json(ev)
        return
    _print_evaluation(ev, examples)


@eval_group.command("list")
@click.option("--candidate", help="Only evaluations of this version.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(candidate: str | None, as_json: bool) -> None:
    """Evaluations, newest first."""
    from learnloop.evaluation import list_evaluations
    from learnloop.store import open_database

    rows = list_evaluations(open_database(settings()), candidate=candidate)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        o = r["metrics"].get("overall", {})
        click.echo(
            f"{r['id']:>4}  {r['candidate']} vs {r['baseline']:8} n={o.get('n')} diff "
            f"{_num(o.get('reward_diff'), '+.4f')} -> {r['verdict']}  {r['created_at']}"
        )
    if not rows:
        click.echo("no evaluations yet")


@eval_group.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Examples to print.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def compare_cmd(a: str, b: str, top: int, as_json: bool) -> None:
    """Two evaluations (ids, or version ids for their latest) side by side,
    with the examples that differ most."""
    from learnloop.evaluation import compare_evaluations
    from learnloop.store import open_database

    s = settings()
    c = compare_evaluations(open_database(s), a, b, top=top, settings=s)
    if as_json:
        echo_json(c)
        return
    la = f"#{c['a']['id']} {c['a']['candidate']}"
    lb = f"#{c['b']['id']} {c['b']['candidate']}"
    click.echo(f"{'':24} {la:>20} {lb:>20}")
    for key, (x, y) in c["overall"].items():
        fx = _num(x) if isinstance(x, float) else str(x)
        fy = _num(y) if isinstance(y, float) else str(y)
        click.echo(f"{key:24} {fx:>20} {fy:>20}")
    for name, (x, y) in c["aspects"].items():
        click.echo(f"{'aspect ' + name:24} {_num(x):>20} {_num(y):>20}")
    for name, (x, y) in c["scenarios"].items():
        click.echo(f"{'[' + name + '] reward':24} {_num(x):>20} {_num(y):>20}")
    click.echo(f"examples that differ most ({c['shared_examples']} shared):")
    for d in c["differ_most"]:
        click.echo(f"  {d['id']}: {d['prompt'][:80]!r}")
        click.echo(f"    {d['a']['model']} ({_num(d['a']['reward'], '.3f')}): {d['a']['text'][:120]!r}")
        click.echo(f"    {d['b']['model']} ({_num(d['b']['reward'], '.3f')}): {d['b']['text'][:120]!r}")
