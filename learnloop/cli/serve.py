"""`learnloop serve`: the HTTP server (ingest API, OpenAI routes, inbox watcher);
`learnloop chat`; `learnloop alias`."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import click

from learnloop.cli.main import settings


@click.command("serve")
@click.option("--host", default=None, help="Interface to bind. [default: server.host, 127.0.0.1]")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="TCP port. [default: server.port, 8377]"
)
@click.option(
    "--watch-inbox/--no-watch-inbox",
    default=None,
    help="Import JSONL files dropped into <data dir>/inbox. [default: server.watch_inbox]",
)
@click.option(
    "--daemon/--no-daemon",
    "with_daemon",
    default=True,
    show_default=True,
    help="Also run the daemon (triggers, jobs, background scoring) in this process.",
)
@click.option(
    "--model",
    "base_model",
    default=None,
    help="Base model the OpenAI routes answer with. [default: serving.base_model, else the prepared smollm2]",
)
@click.option("--no-openai", is_flag=True, help="Do not load a model; the OpenAI routes answer 503.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least important lines shown; debug also shows the libraries' own INFO lines.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="'json': one JSON object a line, for a log collector. [default: server.log_format, text]",
)
def serve_cmd(
    host: str | None,
    port: int | None,
    watch_inbox: bool | None,
    with_daemon: bool,
    base_model: str | None,
    no_openai: bool,
    log_level: str,
    log_format: str | None,
) -> None:
    """Run the learnloop server (and, unless --no-daemon, the daemon).
    Applies database migrations first; API docs at /docs.

    OpenAI-compatible routes (/v1/chat/completions, /v1/models) answer with the base model,
    the `learnloop` alias and every trained version; point an OpenAI client's base_url at
    http://HOST:PORT/v1.
    """
    import uvicorn

    from learnloop import __version__
    from learnloop.api import create_app
    from learnloop.errors import ConfigError
    from learnloop.paths import data_dir
    from learnloop.store import open_database

    s = settings()
    if base_model:
        s.serving.base_model = base_model
    host = host or s.server.host
    port = port or s.server.port
    # Before any effect (migrations, a model, a daemon): a busy port or a data dir another server
    # serves stops the start here, saying which.
    from learnloop.cli.preflight import check_port, claim_data_dir, release

    check_port(host, port)
    server_lock = claim_data_dir(data_dir(s.data_dir).root, f"http://{host}:{port}")
    from learnloop.cli.logs import configure_logging

    configure_logging(log_level, log_format or s.server.log_format, access_polls=s.server.access_log_polls)
    data_dir(s.data_dir).ensure()
    db = open_database(
        s
    )  # migrations applied here; an unreachable database stops the start with a clear error
    runtime, off_reason = None, "OpenAI routes are off (`learnloop serve --no-openai`)."
    if not no_openai:
        from learnloop.serving.setup import build_runtime

        try:
            runtime = build_runtime(s, db)
        except ConfigError as exc:
            if base_model or s.serving.base_model or s.upstreams:
                raise  # a model or an upstream was named and cannot be served: say so and stop
            off_reason = str(exc)
            click.echo(f"OpenAI routes off: {exc}", err=True)
    app = create_app(s, db, watch_inbox=watch_inbox, serving=runtime, serving_off_reason=off_reason)
    watching = s.server.watch_inbox if watch_inbox is None else watch_inbox
    serving = (
        f"serving {getattr(runtime.backend, 'base_model', s.serving.backend)} at /v1; " if runtime else ""
    )
    click.echo(
        f"learnloop {__version__} on http://{host}:{port} ({serving}database "
        f"{s.public_dict()['database_url']}; "
        + (f"watching {data_dir(s.data_dir).inbox})" if watching else "inbox not watched)"),
        err=True,
    )
    daemon = _start_daemon(s, db) if with_daemon else None
    try:
        _server_class()(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level=log_level,
                log_config=None,  # ours (configure_logging), not uvicorn's
                timeout_graceful_shutdown=s.server.shutdown_grace_seconds,
            )
        ).run()
    finally:
        if daemon is not None:
            daemon.stop()  # a running training checkpoints and is requeued
        db.dispose()
        release(server_lock)


def _server_class() -> Any:
    import uvicorn

    from learnloop.api.shutdown import SHUTTING_DOWN

    class Server(uvicorn.Server):
        """uvicorn's server, which also tells answers in flight to stop when a signal asks it to exit."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not SHUTTING_DOWN.is_set():
                logging.getLogger("learnloop.serve").info(
                    "shutting down: answers in flight are cut, a running training checkpoints"
                )
            SHUTTING_DOWN.set()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn raises the signal again once it has stopped: SIGTERM's default action would end the
            # process before the daemon stops (and Ctrl-C would print "Aborted!"). A signal-asked stop is a
            # normal exit here.
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return Server


def _start_daemon(s: Any, db: Any) -> Any:
    """The daemon's one hook into serve: its worker runs in this process (a config lock refuses the start)."""
    from learnloop.daemon.service import Daemon

    daemon = Daemon(s, db)
    daemon.start()
    return daemon


@click.command("chat")
@click.option(
    "--model", default="learnloop", show_default=True, help="Model name: learnloop, base or a version id."
)
@click.option("--url", default=None, help="Server base URL. [default: http://server.host:server.port]")
@click.option("-m", "--message", default=None, help="Send one message, print the answer and exit.")
@click.option("--system", default=None, help="A system message to start the conversation with.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=None)
def chat_cmd(
    model: str,
    url: str | None,
    message: str | None,
    system: str | None,
    temperature: float,
    max_tokens: int | None,
) -> None:
    """Chat with a served model in the terminal (`learnloop serve` must be running).
    /reset clears, /quit ends."""
    import httpx

    s = settings()
    url = (url or f"http://{s.server.host}:{s.server.port}").rstrip("/")
    key = s.serving.api_key or s.api_token
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    interactive = message is None
    if interactive:
        click.echo(f"chatting with {model} at {url} (/reset, /quit)", err=True)
    with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
        while True:
            if interactive:
                try:
                    text = input("> ")
                except (EOFError, KeyboardInterrupt):
                    click.echo("", err=True)
                    return
                if text.strip() in ("/quit", "/exit"):
                    return
                if text.strip() == "/reset":
                    history = history[:1] if system else []
                    continue
                if not text.strip():
                    continue
            else:
                text = message
            history.append({"role": "user", "content": text})
            answer = _stream_answer(http, model, history, temperature, max_tokens)
            history.append({"role": "assistant", "content": answer})
            if not interactive:
                return


def _stream_answer(http, model: str, history: list[dict], temperature: float, max_tokens: int | None) -> str:  # noqa: ANN001
    import httpx

    from learnloop.errors import LearnloopError, StoreUnavailable

    body = {"model": model, "messages": history, "stream": True, "temperature": temperature}
    if max_tokens:
        body["max_tokens"] = max_tokens
    parts: list[str] = []
    try:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code >= 400:
                resp.read()
                try:
                    detail = resp.json()["error"]["message"]
                except Exception:
                    detail = resp.text
                raise LearnloopError(f"{resp.status_code}: {detail}")
            version = resp.headers.get("x-learnloop-version")
            for line in resp.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                for choice in json.loads(line[5:]).get("choices", []):
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        parts.append(delta)
                        sys.stdout.write(delta)
                        sys.stdout.flush()
    except httpx.HTTPError as exc:
        raise StoreUnavailable(
            f"Cannot reach the server at {http.base_url}: {exc}. Is `learnloop serve` running?"
        ) from None
    sys.stdout.write("\n")
    if version:
        click.echo(f"[{version}]", err=True)
    return "".join(parts)


@click.group("alias")
def alias_group() -> None:
    """What each served name (`learnloop`, one per loop) points at; servers follow within a second."""


@alias_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def alias_list(as_json: bool) -> None:
    """Every alias, its version, and its A/B candidate."""
    from learnloop.store import open_database
    from learnloop.store.aliases import list_aliases

    rows = [a.__dict__ for a in list_aliases(open_database(settings()))]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no aliases yet: `learnloop` serves the base model")
    for a in rows:
        extra = (
            f" (candidate {a['candidate_id']}: split {a['split']}, shadow {a['shadow']})"
            if a["candidate_id"]
            else ""
        )
        click.echo(f"{a['name']} -> {a['version_id'] or 'base'}{extra}")


@alias_group.command("set")
@click.argument("alias")
@click.argument("version")
@click.option("--reason", default=None, help="Why (kept in the alias log).")
@click.option(
    "--force", is_flag=True, help="Serve a version the gate rejected or never evaluated (logged as forced)."
)
def alias_set(alias: str, version: str, reason: str | None, force: bool) -> None:
    """Point ALIAS at VERSION: a version id, `base`, or `upstream:<name>` (an [[upstreams]] provider,
    whose answers are captured as teacher data). The gate applies to a version as for `versions promote`."""
    from learnloop.registry import local_actor, move
    from learnloop.store import open_database

    s = settings()
    moved = move(
        open_database(s),
        s,
        alias,
        "set",
        version,
        actor=local_actor(),
        reason=reason,
        force=force,
        override="Set it with --force",
    )
    click.echo(f"{alias} -> {version}" + ("" if moved.changed else " (already)"))


@alias_group.command("split")
@click.argument("alias")
@click.argument("candidate")
@click.option(
    "--share",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of the alias's traffic answered by CANDIDATE (sticky per `user`).",
)
@click.option(
    "--shadow",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests CANDIDATE also answers unseen (both answers captured).",
)
@click.option("--reason", default=None)
@click.option(
    "--force",
    is_flag=True,
    help="Give a share to a version the gate rejected or never evaluated (logged as forced).",
)
def alias_split(
    alias: str, candidate: str, share: float, shadow: float, reason: str | None, force: bool
) -> None:
    """Send a share of ALIAS's traffic to CANDIDATE, a version or `upstream:<name>` (`none` ends the
    split); a share for a version the gate has not passed needs --force, as `versions promote` does."""
    from learnloop.registry import local_actor, move
    from learnloop.store import open_database

    s = settings()
    move(
        open_database(s),
        s,
        alias,
        "split",
        None if candidate == "none" else candidate,
        share=share,
        shadow=shadow,
        force=force,
        actor=local_actor(),
        reason=reason,
        override="Split with --force",
    )
    click.echo(f"{alias}: candidate {candidate}, split {share}, shadow {shadow}")
