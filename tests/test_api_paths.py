"""Issue 20.3: paths in requests. Over HTTP an export goes under the data dir's exports/ folder,
named, never to a path the request gives; a path the server reads is absolute and never expanded
with ``~``; a bad one is a 4xx naming the field, not a 500, and nothing is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from learnloop.api import create_app
from learnloop.config import Settings
from learnloop.errors import Conflict, ValidationFailed
from learnloop.registry.export import named_export_dir
from learnloop.store.db import Database


@pytest.fixture
def client(settings: Settings, sqlite_db: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, sqlite_db, watch_inbox=False), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(
    "out", ["/etc/learnloop-probe", "../escape", "a/b", "..", ".hidden", "~root/x", "x\x00y", "", "-x"]
)
def test_an_export_named_by_a_path_is_refused_and_nothing_is_written(
    client: TestClient, settings: Settings, tmp_path: Path, out: str
) -> None:
    before = {p for p in tmp_path.rglob("*")}
    r = client.post("/v1/versions/v0001/export", json={"format": "merged", "out": out})
    assert r.status_code == 422, r.text
    assert [p["loc"] for p in r.json()["problems"]] == ["out"]
    assert not Path("/etc/learnloop-probe").exists()
    assert {p for p in tmp_path.rglob("*")} == before


def test_a_named_export_goes_under_exports_and_a_link_there_is_not_followed(
    settings: Settings, tmp_path: Path
) -> None:
    exports = settings.data_dir / "exports"
    assert named_export_dir(settings, "v0001-gguf") == exports / "v0001-gguf"
    exports.mkdir(parents=True)
    (exports / "elsewhere").symlink_to(tmp_path)
    with pytest.raises(Conflict, match="link out of the exports folder"):
        named_export_dir(settings, "elsewhere")
    with pytest.raises(ValidationFailed, match="not a path"):
        named_export_dir(settings, "../x")


def test_an_ollama_name_that_reads_as_an_option_is_refused(client: TestClient) -> None:
    r = client.post("/v1/versions/v0001/export", json={"format": "ollama", "ollama_name": "--help"})
    assert r.status_code == 422 and r.json()["problems"][0]["loc"] == "ollama_name"


@pytest.mark.parametrize("adapter_dir", ["~nosuchuser/x", "~/adapter", "relative/adapter", "", "/x\x00"])
def test_a_register_path_that_is_not_absolute_is_a_422(client: TestClient, adapter_dir: str) -> None:
    r = client.post("/v1/versions", json={"adapter_dir": adapter_dir})
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["loc"] == "adapter_dir"


def test_a_base_model_from_a_request_is_never_expanded(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/v1/versions", json={"adapter_dir": str(tmp_path), "base_model": "~nosuchuser/m"})
    assert r.status_code == 422 and r.json()["problems"][0]["loc"] == "base_model", r.text


def test_a_register_path_holding_no_adapter_is_a_404(client: TestClient, tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path, Path("/")):
        r = client.post("/v1/versions", json={"adapter_dir": str(path)})
        assert r.status_code == 404, r.text
        assert str(path) in r.json()["error"]
