"""`awo benchmark jit-code`: the code-reading change-risk model on a folder of commits with their diffs
(the schema of ../shared/data/jit/openstack-jitline: 14 change metrics, message, per-file added and
removed lines, a `split` column). Trained on `split == "train"`, evaluated once on `split == "test"`,
beside the metrics-only model, a LightGBM on the 14 metrics (300 trees, defaults) and JITLine's published
per-commit predictions when the folder has them; the AUC differences get a paired bootstrap interval.
The published split is random, so the same models are also compared on a time-ordered 80/20 split."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.change_metrics import KAMEI_METRICS
from features.code_tokens import CHANGED_PATHS, diff_lines, diff_paths
from features.errors import BadConfig, BadTable
from models.code_model import CodeModelConfig, CodeRiskModel
from models.evaluation import classification_metrics
from models.risk_model import RiskModel

COMMITS = "commits.parquet"
JITLINE = "jitline_test_predictions.csv"
REQUIRED = ("sha", "split", "bug", "committed_at", "message", "files", *KAMEI_METRICS)
AWO_CODE = "awo (LightGBM + code)"
AWO_METRICS = "awo (LightGBM, metrics)"
LGBM_300 = "LightGBM 300 trees (14 metrics)"
JITLINE_NAME = "JITLine (published predictions)"
BOOTSTRAP = 2000


def load_commits(dataset: Path) -> pd.DataFrame:
    """The folder's commits in time order with `added_lines`/`removed_lines` lists and `changed_paths`
    (every file's path); a clear error names the file and what is missing or wrong."""
    path = Path(dataset) / COMMITS
    if not path.is_file():
        raise BadTable(f"{path}: no such file (expected a folder with {COMMITS})")
    frame = pd.read_parquet(path)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise BadTable(f"{path}: missing columns {missing}")
    splits = set(frame["split"].unique())
    if not splits <= {"train", "test"} or splits != {"train", "test"}:
        raise BadTable(f"{path}: column 'split' must hold 'train' and 'test', found {sorted(splits)}")
    frame = frame.sort_values("committed_at", kind="stable").reset_index(drop=True)
    lines = [diff_lines(files) for files in frame["files"]]
    frame["added_lines"] = [a for a, _ in lines]
    frame["removed_lines"] = [r for _, r in lines]
    frame[CHANGED_PATHS] = [diff_paths(files) for files in frame["files"]]
    frame[list(KAMEI_METRICS)] = frame[list(KAMEI_METRICS)].astype(float)
    frame["bug"] = frame["bug"].astype(int)
    frame["committed_at"] = pd.to_datetime(frame["committed_at"], utc=True)
    return frame


def lightgbm_300(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    from lightgbm import LGBMClassifier

    model = LGBMClassifier(n_estimators=300, verbose=-1, random_state=0, n_jobs=2)
    model.fit(train[list(KAMEI_METRICS)], train["bug"])
    return np.asarray(model.predict_proba(test[list(KAMEI_METRICS)]))[:, 1]


def paired_bootstrap(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0
) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same rows, with a 95% percentile interval over resamples of the rows."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = len(y)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        if y[i].min() == y[i].max():
            continue
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"auc_diff": float(roc_auc_score(y, a) - roc_auc_score(y, b)), "ci_low": float(low),
            "ci_high": float(high)}  # fmt: skip


def _evaluate(
    split: str,
    train: pd.DataFrame,
    test: pd.DataFrame,
    jitline: pd.Series | None,
    config: CodeModelConfig,
    bootstrap: int,
) -> tuple[list[dict], dict[str, np.ndarray], dict[str, float]]:
    metrics = list(KAMEI_METRICS)
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    started, cpu = time.perf_counter(), time.process_time()
    code = CodeRiskModel(metrics, config, name="jit-code").fit(train, train["bug"], train["committed_at"])
    seconds[AWO_CODE] = time.perf_counter() - started
    # CPU seconds of this process (all its threads): on a shared machine the wall time counts other jobs
    code_cpu = time.process_time() - cpu
    scores[AWO_CODE] = code.predict_proba(test)
    started = time.perf_counter()
    plain = RiskModel(metrics, config.metrics, name="jit-metrics").fit(
        train, train["bug"], train["committed_at"]
    )
    seconds[AWO_METRICS] = time.perf_counter() - started
    scores[AWO_METRICS] = plain.predict_proba(test)
    started = time.perf_counter()
    scores[LGBM_300] = lightgbm_300(train, test)
    seconds[LGBM_300] = time.perf_counter() - started
    if jitline is not None:
        scores[JITLINE_NAME] = test["sha"].map(jitline).to_numpy(dtype=float)
    y = test["bug"].to_numpy()
    effort = (test["la"] + test["ld"]).to_numpy()
    rows = []
    for name, p in scores.items():
        m = classification_metrics(y, p, effort, threshold=0.5)
        flagged = p >= 0.5
        m["precision"] = float(y[flagged].mean()) if flagged.any() else 0.0
        m["recall"] = float(flagged[y == 1].mean())
        rows.append(
            {
                "project": test["repo"].iloc[0] if test["repo"].nunique() == 1 else "all",
                "split": split,
                "model": name,
                "auc": m["auc"],
                "f1": m["f1"],
                "precision": m["precision"],
                "recall": m["recall"],
                "recall@20%effort": m["recall_at_20_effort"],
                "effort@20%recall": m["effort_at_20_recall"],
                "popt": m["popt"],
                "train_rows": len(train),
                "test_rows": len(test),
                "train_seconds": seconds.get(name, float("nan")),
                "train_cpu_seconds": code_cpu if name == AWO_CODE else float("nan"),
            }
        )
    for name in scores:
        if name != AWO_CODE:
            rows[0][f"vs {name}"] = paired_bootstrap(y, scores[AWO_CODE], scores[name], bootstrap)
    return rows, scores, seconds


def run_jit_code_benchmark(
    dataset: Path,
    out: Path | None = None,
    bootstrap: int = BOOTSTRAP,
    config: CodeModelConfig | None = None,
) -> pd.DataFrame:
    """Rows per split ("published", "time-ordered 80/20") and model; the awo code model's row carries
    `vs MODEL` paired-bootstrap intervals (`bootstrap` resamples) of its AUC difference to each other
    model. `config` sets the code model (its `metrics` part also sets the metrics-only model)."""
    if bootstrap < 10:
        raise BadConfig(f"bootstrap: {bootstrap} resamples; need at least 10 for a 95% interval")
    config = config or CodeModelConfig()
    data = load_commits(dataset)
    if "repo" not in data.columns:
        data["repo"] = Path(dataset).name
    jitline = None
    if (Path(dataset) / JITLINE).is_file():
        published = pd.read_csv(Path(dataset) / JITLINE)
        missing = [c for c in ("sha", "prob") if c not in published.columns]
        if missing:
            raise BadTable(f"{Path(dataset) / JITLINE}: missing columns {missing}")
        jitline = published.set_index("sha")["prob"]
    train, test = data[data["split"] == "train"], data[data["split"] == "test"]
    rows, _, _ = _evaluate("published", train, test, jitline, config, bootstrap)
    n_train = int(len(data) * 0.8)
    later = data.iloc[n_train:]
    time_rows, _, _ = _evaluate("time-ordered 80/20", data.iloc[:n_train], later, None, config, bootstrap)
    table = pd.DataFrame([*rows, *time_rows])
    if out is not None:
        Path(out).write_text(table.to_json(orient="records", indent=2))
    return table
