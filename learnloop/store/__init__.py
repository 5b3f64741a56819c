"""The store: SQL schema, migrations, sessions and the queries every other stage uses."""

from learnloop.store.db import Database, downgrade, make_engine, open_database, upgrade
from learnloop.store.models import (
    Dataset,
    DesiredState,
    Evaluation,
    Feedback,
    Job,
    JobKind,
    JobState,
    Judgment,
    ModelVersion,
    Score,
    ScoreSource,
    Source,
    Split,
    TrainingMetric,
    Trajectory,
    VersionState,
)
from learnloop.store.records import (
    CheckedBatch,
    FeedbackIn,
    IngestBatch,
    ScoreIn,
    TrajectoryIn,
    parse_batch,
    parse_trajectory,
)
from learnloop.store.trajectories import IngestResult, ingest, stats

__all__ = [
    "CheckedBatch", "Database", "Dataset", "DesiredState", "Evaluation", "Feedback", "FeedbackIn", "IngestBatch", "IngestResult",
    "Job", "JobKind", "JobState", "Judgment", "ModelVersion", "Score", "ScoreIn", "ScoreSource", "Source", "Split",
    "TrainingMetric", "Trajectory", "TrajectoryIn", "VersionState", "downgrade", "ingest", "make_engine",
    "open_database", "parse_batch", "parse_trajectory", "stats", "upgrade",
]
