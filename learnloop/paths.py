"""The one module that owns learnloop's on-disk layout under the data dir."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DATABASE_FILE = "learnloop.db"

# A training run's output folder (training/loop.py, training/checkpoint.py, training/control.py):
#   train_config.json, metrics.jsonl, control.json, .lock, adapter/, checkpoint-<step>/
TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CONTROL_FILE = "control.json"
RUN_LOCK_FILE = ".lock"
ADAPTER_DIR = "adapter"
# Inside a checkpoint (and, for the optimizer, the final adapter):
CHECKPOINT_MARKER = "COMMITTED.json"  # written last: a checkpoint without it is torn
CHECKPOINT_STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"  # peft's name
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
TMP_CHECKPOINT_PREFIX = ".tmp-checkpoint-"


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / f"checkpoint-{step}"


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / DATABASE_FILE

    @property
    def spool(self) -> Path:
        """Capture records that could not be delivered yet (one JSONL file per writer process)."""
        return self.root / "spool"

    @property
    def inbox(self) -> Path:
        """JSONL files dropped here are imported by the server."""
        return self.root / "inbox"

    @property
    def inbox_processed(self) -> Path:
        return self.inbox / "processed"

    @property
    def inbox_failed(self) -> Path:
        return self.inbox / "failed"

    @property
    def models(self) -> Path:
        """Prepared base models (safetensors folders), one folder per name."""
        return self.root / "models"

    @property
    def adapters(self) -> Path:
        """Trained, immutable model versions, one folder per version id."""
        return self.root / "adapters"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def logs(self) -> Path:
        """Daily log files of the daemon's events (``learnloop-YYYY-MM-DD.log``)."""
        return self.root / "logs"

    def model(self, name: str) -> Path:
        return self.models / name

    def adapter(self, version_id: str) -> Path:
        return self.adapters / version_id

    def job_checkpoints(self, job_id: int | str) -> Path:
        return self.checkpoints / f"job-{job_id}"

    def dataset_file(self, dataset_id: int | str, kind: str) -> Path:
        return self.datasets / f"{dataset_id}-{kind}.jsonl"

    def ensure(self) -> DataDir:
        for p in (self.root, self.spool, self.inbox, self.inbox_processed, self.inbox_failed):
            p.mkdir(parents=True, exist_ok=True)
        return self


def data_dir(root: Path | str) -> DataDir:
    return DataDir(Path(root).expanduser())
