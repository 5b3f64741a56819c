"""An application process for the kill -9 test: records trajectories through the capture SDK.

    python tests/capture_app.py DATABASE_URL SPOOL_DIR record N
        # deliver a first part, wait for 'go' on stdin,
        # record N more, report them, then idle
    python tests/capture_app.py DATABASE_URL SPOOL_DIR deliver
        # start (redelivering the spool), flush, exit
    python tests/capture_app.py DATABASE_URL SPOOL_DIR exit [SERVER_URL]
        # record 50 and return without flushing

Every line on stdout is one JSON object.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from learnloop.capture import CaptureClient
from learnloop.config import Settings


def say(**data) -> None:
    print(json.dumps(data), flush=True)


def main() -> None:
    url, spool_dir, mode = sys.argv[1:4]
    settings = Settings(data_dir=tempfile.mkdtemp())
    if mode == "exit":  # record, then simply return: the atexit hook must deliver or spool them
        server_url = sys.argv[4] if len(sys.argv) > 4 else None
        client = CaptureClient(
            settings,
            database=None if server_url else url,
            server_url=server_url,
            spool_dir=spool_dir,
            flush_interval=5,
            # With the server down the exit must give up within its bound; with the store up it must
            # deliver, however busy the machine is (a 1 s bound spooled them on a loaded CI machine).
            shutdown_timeout=1.0 if server_url else 120.0,
        )
        ids = []
        for i in range(50):
            with client.trajectory(scenario="at-exit") as t:
                t.user(f"q{i}")
            ids.append(t.id)
        say(ids=ids)
        return
    client = CaptureClient(
        settings, database=url, spool_dir=spool_dir, flush_interval=0.05, batch_size=10_000, max_backoff=0.5
    )
    if mode == "deliver":
        ok = client.flush(120)
        say(delivered=ok, stats=client.stats())
        client.close(5)
        return

    n = int(sys.argv[4])
    first = []
    for i in range(20):
        with client.trajectory(scenario="before-kill") as t:
            t.user(f"early {i}")
            t.assistant("ok")
        first.append(t.id)
    assert client.flush(60)
    say(phase="delivered", ids=first)
    sys.stdin.readline()  # the test locks the database, then says go
    later = []
    for i in range(n):
        with client.trajectory(scenario="mid-flush") as t:
            t.user(f"late {i}")
            t.assistant("ok")
            if i % 10 == 0:
                t.feedback(thumbs=1)
        later.append(t.id)
    for tid in first[:10] + later[:10]:
        client.feedback(tid, rating=3)
    say(phase="recorded", ids=later)
    time.sleep(600)  # the writer is stuck on the locked database; the test kills us here


if __name__ == "__main__":
    main()
