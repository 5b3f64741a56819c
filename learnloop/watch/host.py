"""Host health: database reachability and latency, free disk, memory, learnloop processes, GPUs.

Everything here is measured when asked (no background sampler): a status read costs a few
milliseconds, and what it shows is never stale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text

from learnloop.store.db import Database, alembic_config, current_revision

# The learnloop subcommands whose processes the status names, by their role.
_ROLES = {"serve": "server", "daemon": "daemon"}
TRAINING_MODULE = "learnloop.training.run"


def head_revisions() -> set[str]:
    """The migration heads this code knows (what `learnloop db upgrade` would reach)."""
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def database_health(db: Database) -> dict[str, Any]:
    """Reachable, round-trip latency of ``select 1``, schema revision and whether it is at head."""
    started = time.perf_counter()
    try:
        with db.engine.connect() as conn:
            conn.execute(text("select 1"))
            latency_ms = (time.perf_counter() - started) * 1000
        revision = current_revision(db.engine)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the database is the answer, not an error
        reason = (
            str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            if str(exc).strip()
            else type(exc).__name__
        )
        return {
            "reachable": False,
            "latency_ms": None,
            "dialect": db.dialect,
            "revision": None,
            "at_head": False,
            "error": reason,
        }
    heads = head_revisions()
    return {
        "reachable": True,
        "latency_ms": round(latency_ms, 2),
        "dialect": db.dialect,
        "revision": revision,
        "at_head": revision in heads,
        "heads": sorted(heads),
    }


def disk_health(path: Path, floor_gb: float) -> dict[str, Any]:
    """Free space on the file system holding ``path``
    (its nearest existing parent if it does not exist yet)."""
    probe = Path(path).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return {
        "path": str(Path(path).expanduser()),
        "free_bytes": usage.free,
        "total_bytes": usage.total,
        "free_pct": round(100 * usage.free / usage.total, 1) if usage.total else None,
        "floor_bytes": int(floor_gb * 1024**3),
        "ok": usage.free >= floor_gb * 1024**3,
    }


def memory_health() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "total_bytes": vm.total,
        "used_bytes": vm.total - vm.available,
        "available_bytes": vm.available,
        "percent": vm.percent,
    }


def process_role(cmdline: list[str]) -> str | None:
    """'server', 'daemon', 'training' or 'cli' for a learnloop process's command line; None for others."""
    if not cmdline:
        return None
    if any(TRAINING_MODULE in arg for arg in cmdline):
        return "training"
    for i, arg in enumerate(cmdline):
        launcher = os.path.basename(arg) == "learnloop" or (
            arg == "-m" and i + 1 < len(cmdline) and cmdline[i + 1] == "learnloop"
        )
        if not launcher:
            continue
        rest = cmdline[i + (2 if arg == "-m" else 1) :]
        sub = next((a for a in rest if not a.startswith("-")), None)
        return _ROLES.get(sub or "", "cli")
    return None


def _own_processes() -> list[psutil.Process]:
    """This process and the learnloop processes under it: the training runs it supervises (with their
    launchers' workers), not whatever else it happens to have started."""
    me = psutil.Process(os.getpid())
    out = [me]
    try:
        for child in me.children(recursive=True):
            try:
                if process_role(child.cmdline()) is not None or any(
                    TRAINING_MODULE in " ".join(p.cmdline()) for p in child.parents() if p.pid != me.pid
                ):
                    out.append(child)
            except psutil.Error:
                continue  # it ended while we looked
    except psutil.Error:
        pass
    return out


def learnloop_processes(self_role: str | None = None, *, own: bool = False) -> list[dict[str, Any]]:
    """The learnloop processes with their RSS; this process is included as ``self_role``. ``own``: only
    this process and those it started (what a server answers for), not every learnloop on the host."""
    me = os.getpid()
    found: list[dict[str, Any]] = []
    attrs = ["pid", "cmdline", "memory_info", "create_time"]
    procs = _own_processes() if own else psutil.process_iter(attrs)
    for proc in procs:
        try:
            info = proc.info if not own else proc.as_dict(attrs)
            role = self_role if info["pid"] == me and self_role else process_role(info["cmdline"] or [])
            if own and role is None:
                role = "training"  # a worker under a training run (a launcher's child)
        except Exception:  # noqa: BLE001 - a process that vanished mid-read is simply not listed
            continue
        if role is None or info["memory_info"] is None:
            continue
        found.append(
            {
                "pid": info["pid"],
                "role": role,
                "rss_bytes": info["memory_info"].rss,
                "self": info["pid"] == me,
                "started_at": info["create_time"],
                # No command line: it can carry secrets (tokens, URLs with passwords) and reads are open.
            }
        )
    found.sort(key=lambda p: (p["role"], p["pid"]))
    return found


def gpu_health() -> list[dict[str, Any]]:
    """Memory and utilisation of each GPU; [] when there is none.

    NVML (nvidia-ml-py) first, then `nvidia-smi`, then torch if this process already imported it:
    importing torch only to look would cost seconds and hundreds of MB in the server.
    """
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                name = pynvml.nvmlDeviceGetName(h)
                out.append(
                    {
                        "index": i,
                        "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_used_bytes": int(mem.used),
                        "memory_total_bytes": int(mem.total),
                        "utilization_pct": float(util.gpu),
                    }
                )
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library or no driver: try the next way
        pass
    if shutil.which("nvidia-smi"):
        try:
            res = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            out = []
            for line in res.stdout.strip().splitlines():
                idx, name, used, total, util = (p.strip() for p in line.split(","))
                out.append(
                    {
                        "index": int(idx),
                        "name": name,
                        "memory_used_bytes": int(float(used)) * 1024**2,
                        "memory_total_bytes": int(float(total)) * 1024**2,
                        "utilization_pct": float(util) if util.replace(".", "").isdigit() else None,
                    }
                )
            return out
        except Exception:  # noqa: BLE001
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            try:
                util: float | None = float(torch.cuda.utilization(i))
            except Exception:  # noqa: BLE001 - utilization() needs pynvml
                util = None
            out.append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "memory_used_bytes": int(total - free),
                    "memory_total_bytes": int(total),
                    "utilization_pct": util,
                }
            )
        return out
    return []


def host_health(
    db: Database, data_root: Path, *, disk_floor_gb: float, self_role: str | None = None
) -> dict[str, Any]:
    return {
        "database": database_health(db),
        "disk": disk_health(data_root, disk_floor_gb),
        "memory": memory_health(),
        # A server lists itself and what it supervises; the CLI looks at the whole host.
        "processes": learnloop_processes(self_role, own=self_role == "server"),
        "gpus": gpu_health(),
    }


def readiness(
    db: Database, data_root: Path, *, disk_floor_gb: float
) -> tuple[bool, list[str], dict[str, Any]]:
    """Ready when the database answers, its schema is at head and the data dir's disk is above the floor."""
    database = database_health(db)
    disk = disk_health(data_root, disk_floor_gb)
    reasons = []
    if not database["reachable"]:
        reasons.append(f"database unreachable: {database.get('error')}")
    elif not database["at_head"]:
        reasons.append(
            f"database schema at {database['revision']!r}, code expects {', '.join(database['heads'])}: "
            "run `learnloop db upgrade`"
        )
    if not disk["ok"]:
        reasons.append(
            f"free disk {disk['free_bytes'] / 1024**3:.2f} GB under the floor of {disk_floor_gb} GB "
            f"at {disk['path']}"
        )
    return not reasons, reasons, {"database": database, "disk": disk}
