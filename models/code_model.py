"""A change-risk model that reads the code: a linear model on the tokens of the diff and the message
(JITLine, Pornprasit & Tantithamthavorn, MSR 2021) blended with the metrics LightGBM by a logistic
regression learned on time-ordered out-of-fold scores (stacking, Wolpert 1992); added lines are ranked by
the linear model's token weights, as JITLine ranks lines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from features.code_tokens import (
    ADDED_WHERE,
    CHANGED_PATHS,
    CODE_COLUMNS,
    changed_paths,
    commit_text,
    line_tokens,
)
from features.errors import BadTable
from models.evaluation import best_f1_threshold, risk_reference
from models.risk_model import Explanation, ModelConfig, RiskModel, TooFewLabels

CODE_RISK = "code_risk"


class CodeModelConfig(BaseModel):
    """The text model's settings and the metrics model's (the project's RiskModel)."""

    metrics: ModelConfig = Field(default_factory=ModelConfig)
    text_folds: int = Field(default=10, ge=2, le=50, description="time-ordered folds for out-of-fold scores")
    min_df: int = Field(default=3, ge=1, description="a token must occur in this many training commits")
    C: float = Field(default=1.0, gt=0, description="inverse L2 strength of the text logistic regression")
    blend_share: float = Field(
        default=0.2, gt=0, lt=0.5, description="newest training rows the blend weights are learned on"
    )
    # Off: on openstack-jitline the path words moved the published-split AUC by -0.0006 and the
    # time-ordered one by -0.0001 (benchmarks/results/jit_experiments.md).
    path_tokens: bool = Field(
        default=False, description="read the words of the changed paths (`changed_paths` or `added_where`)"
    )


@dataclass(frozen=True)
class LineDriver:
    """One added line of a commit: its index in `added_lines`, its text, and the sum of the text model's
    token contributions (log-odds) on it."""

    index: int
    line: str
    score: float


def time_folds(n: int, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Forward-chaining folds over rows in time order: (rows to fit, rows to score), every fitted row older
    than every scored row. The first block is never scored (nothing older exists)."""
    edges = np.linspace(0, n, folds + 1).astype(int)
    return [(np.arange(0, edges[k]), np.arange(edges[k], edges[k + 1])) for k in range(1, folds)]


def path_column(frame: pd.DataFrame) -> str | None:
    """The column a frame's changed paths are read from: `changed_paths` (every changed file), else
    `added_where` (files with added lines), else None."""
    return next((c for c in (CHANGED_PATHS, ADDED_WHERE) if c in frame.columns), None)


def documents(frame: pd.DataFrame, paths: bool = True) -> list[str]:
    """Each row's `commit_text` from its code columns (None reads as no lines / an empty message) and,
    with `paths`, the words of its changed paths (none when the frame has no path column)."""
    missing = [c for c in CODE_COLUMNS if c not in frame.columns]
    if missing:
        raise BadTable(f"input lacks code columns {missing}")
    none = [None] * len(frame)
    changed = frame[CHANGED_PATHS] if paths and CHANGED_PATHS in frame.columns else none
    where = frame[ADDED_WHERE] if paths and ADDED_WHERE in frame.columns else none
    return [
        commit_text(
            list(a) if a is not None else [], list(r) if r is not None else [], m or "", changed_paths(c, w)
        )
        for a, r, m, c, w in zip(
            frame["added_lines"], frame["removed_lines"], frame["message"], changed, where, strict=True
        )
    ]


class TextRiskModel:
    """A class-balanced logistic regression on TF-IDF (sublinear counts) of prefixed tokens and, when given,
    the change metrics as signed log1p values standardised on the training rows: JITLine joins the metrics
    to the token counts in one model, and Kamei et al. (2013) fit a logistic regression on log metrics."""

    def __init__(self, min_df: int = 3, C: float = 1.0) -> None:
        self.min_df = min_df
        self.C = C

    def fit(self, texts: list[str], y: np.ndarray, metrics: np.ndarray | None = None) -> TextRiskModel:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        min_df = min(self.min_df, max(1, len(texts) // 10))
        self.vectorizer_ = TfidfVectorizer(
            token_pattern=r"\S+", lowercase=False, min_df=min_df, sublinear_tf=True, dtype=np.float32
        )
        X = self.vectorizer_.fit_transform(texts)
        self.vectorizer_.__dict__.pop("stop_words_", None)  # every pruned token: large, never used
        logs = _signed_log(metrics, len(texts))
        self.center_ = np.nanmean(logs, axis=0) if logs.shape[1] else np.zeros(0)
        self.scale_ = np.nanstd(logs, axis=0) + 1e-9 if logs.shape[1] else np.zeros(0)
        self.logistic_ = LogisticRegression(C=self.C, solver="liblinear", class_weight="balanced").fit(
            self._design(X, logs), y
        )
        return self

    def _standardised(self, logs: np.ndarray) -> np.ndarray:
        return np.nan_to_num((logs - self.center_) / self.scale_)  # a missing metric reads as the mean

    def _design(self, X, logs: np.ndarray):
        from scipy import sparse

        return sparse.hstack([X, sparse.csr_matrix(self._standardised(logs))], format="csr")

    def parts(self, texts: list[str], metrics: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(the tokens' share of each row's log-odds, each metric's share as a rows × metrics matrix); with
        `intercept_` they sum to `score`."""
        X = self.vectorizer_.transform(texts)
        coef = self.logistic_.coef_[0]
        words = np.asarray(X @ coef[: X.shape[1]], dtype=float).ravel()
        terms = self._standardised(_signed_log(metrics, len(texts))) * coef[X.shape[1] :]
        return words, terms

    @property
    def intercept_(self) -> float:
        return float(self.logistic_.intercept_[0])

    def score(self, texts: list[str], metrics: np.ndarray | None = None) -> np.ndarray:
        words, terms = self.parts(texts, metrics)
        return words + terms.sum(axis=1) + self.intercept_

    def line_scores(self, text: str, lines: list[str]) -> np.ndarray:
        """Each line's share of the commit's text score: a token's contribution (weight × tf-idf value in
        the commit) split evenly over its occurrences, summed per line."""
        X = self.vectorizer_.transform([text]).tocsr()
        vocabulary = self.vectorizer_.vocabulary_
        coef = self.logistic_.coef_[0]
        value = dict(zip(X.indices.tolist(), X.data.tolist(), strict=True))
        counts: dict[str, int] = {}
        for token in text.split():
            counts[token] = counts.get(token, 0) + 1
        scores = np.zeros(len(lines))
        for i, line in enumerate(lines):
            for token in line_tokens(line):
                j = vocabulary.get(token)
                if j is not None and j in value:
                    scores[i] += coef[j] * value[j] / counts[token]
        return scores


def _signed_log(metrics: np.ndarray | None, rows: int) -> np.ndarray:
    if metrics is None:
        return np.zeros((rows, 0))
    values = np.asarray(metrics, dtype=float)
    return np.sign(values) * np.log1p(np.abs(values))


class CodeRiskModel:
    """Metrics + what the diff and message say; the public surface mirrors RiskModel's.

    Score (log-odds): `intercept_ + weights_[0] * metrics booster raw + weights_[1] * text score`, a
    logistic regression over the two scores learned on the newest `blend_share` of the training rows,
    where the booster was fitted on the older rows only and the text scores are time-ordered
    out-of-fold; both models are then refitted on every training row. The blend is itself the calibrator
    (Platt, 1999): the probability is the logistic of the score."""

    def __init__(self, features: list[str], config: CodeModelConfig | None = None, name: str = "risk-code"):
        self.features = list(features)
        self.config = config or CodeModelConfig()
        self.name = name

    @property
    def input_columns(self) -> list[str]:
        """Every column `predict_proba` reads: the metric features, the code columns and, when the
        training frame had one, its path column (a frame without it is scored without path words)."""
        paths = getattr(self, "path_column_", None)
        return [*self.features, *CODE_COLUMNS, *([paths] if paths else [])]

    def documents(self, frame: pd.DataFrame) -> list[str]:
        """The text model's documents of `frame` to score: with path words when the model was trained on
        them (`documents`)."""
        return documents(frame, getattr(self, "path_column_", None) is not None)

    def out_of_fold_scores(
        self, texts: list[str], y: np.ndarray, metrics: np.ndarray | None = None
    ) -> np.ndarray:
        """Linear-model scores of rows in time order, each from a model fitted on older rows only (NaN for
        the first block, and for blocks before both classes have been seen)."""
        scores = np.full(len(texts), np.nan)
        for fit_rows, score_rows in time_folds(len(texts), self.config.text_folds):
            if y[fit_rows].sum() == 0 or y[fit_rows].sum() == len(fit_rows):
                continue  # one class only: no model to fit yet
            model = TextRiskModel(self.config.min_df, self.config.C).fit(
                [texts[i] for i in fit_rows], y[fit_rows], None if metrics is None else metrics[fit_rows]
            )
            scores[score_rows] = model.score(
                [texts[i] for i in score_rows], None if metrics is None else metrics[score_rows]
            )
        return scores

    def fit(self, frame: pd.DataFrame, y: pd.Series | np.ndarray, times: pd.Series) -> CodeRiskModel:
        from sklearn.linear_model import LogisticRegression

        order = np.argsort(pd.to_datetime(pd.Series(times)).to_numpy(), kind="stable")
        frame = frame.reset_index(drop=True).iloc[order].reset_index(drop=True)
        y = np.asarray(y, dtype=int)[order]
        times = pd.Series(times).reset_index(drop=True).iloc[order].reset_index(drop=True)
        self.path_column_ = path_column(frame) if self.config.path_tokens else None
        texts = self.documents(frame)
        metrics = self._metrics(frame)
        oof = self.out_of_fold_scores(texts, y, metrics)
        blend = np.arange(int(len(y) * (1 - self.config.blend_share)), len(y))
        older = np.arange(blend[0])
        early = RiskModel(self.features, self.config.metrics, name=self.name)
        early.fit(frame.iloc[older], y[older], times.iloc[older])
        pairs = np.column_stack([early.raw_score(frame.iloc[blend]), oof[blend]])
        known = ~np.isnan(pairs[:, 1])
        if y[blend][known].sum() < 5 or (1 - y[blend][known]).sum() < 5:
            raise TooFewLabels(
                f"{self.name}: {int(known.sum())} rows with out-of-fold scores in the blend slice hold "
                f"{int(y[blend][known].sum())} positives; need 5 of each class"
            )
        # Nearly unregularised: two inputs and thousands of rows, the weights are what the data say.
        blender = LogisticRegression(C=1e4).fit(pairs[known], y[blend][known])
        self.weights_ = np.asarray(blender.coef_[0], dtype=float)
        self.intercept_ = float(blender.intercept_[0])
        blended = self.calibrated_probability(pairs[known] @ self.weights_ + self.intercept_)
        self.threshold_ = best_f1_threshold(y[blend][known], blended)
        self.reference_ = risk_reference(blended, y[blend][known])
        self.text_ = TextRiskModel(self.config.min_df, self.config.C).fit(texts, y, metrics)
        self.risk_ = RiskModel(self.features, self.config.metrics, name=self.name).fit(frame, y, times)
        self.trained_rows_ = {**self.risk_.trained_rows_, "blend": int(known.sum())}
        return self

    def _metrics(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise BadTable(f"{self.name}: input lacks features {missing}")
        return frame[self.features].to_numpy(dtype=float)

    def code_risk(self, frame: pd.DataFrame) -> np.ndarray:
        """What the diff and message alone add to the linear model's log-odds (its tokens' share)."""
        words, _ = self.text_.parts(self.documents(frame), self._metrics(frame))
        return words

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """The blended log-odds; `calibrated_probability` turns it into the probability."""
        return self._blend(
            self.risk_.raw_score(frame), self.text_.score(self.documents(frame), self._metrics(frame))
        )

    def _blend(self, booster_raw: np.ndarray, text: np.ndarray) -> np.ndarray:
        return self.intercept_ + self.weights_[0] * booster_raw + self.weights_[1] * text

    def calibrated_probability(self, raw: np.ndarray) -> np.ndarray:
        """The probability of a blended raw score (the logistic function: the blend is the calibrator)."""
        return 1.0 / (1.0 + np.exp(-np.asarray(raw, dtype=float)))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibrated_probability(self.raw_score(frame))

    def contribution_matrix(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(contributions in `feature_columns` order plus a last column, the bias; the tokens' shares).
        Each model's contributions are scaled by its blend weight: a metric's column holds its booster
        contribution plus its linear term, `code_risk` the tokens' share of the linear log-odds, the bias
        both intercepts and the booster's bias. Every row sums to `raw_score`."""
        w_booster, w_linear = self.weights_
        matrix = self.risk_.contribution_matrix(frame) * w_booster
        words, terms = self.text_.parts(self.documents(frame), self._metrics(frame))
        matrix[:, : len(self.features)] += w_linear * terms
        matrix[:, -1] += self.intercept_ + w_linear * self.text_.intercept_
        code = (w_linear * words).reshape(-1, 1)
        return np.hstack([matrix[:, :-1], code, matrix[:, -1:]]), words

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-column contributions to the blended log-odds, `code_risk` (the diff and message) and
        `bias`; rows sum to raw_score."""
        matrix, _ = self.contribution_matrix(frame)
        return pd.DataFrame(matrix, columns=[*self.feature_columns, "bias"], index=frame.index)

    def explain(self, frame: pd.DataFrame, top: int) -> Explanation:
        """The `top` drivers of each row's blended log-odds by absolute contribution, the `code_risk`
        driver's value being the tokens' share of the linear log-odds; with every column, bias + Σ =
        raw_score."""
        matrix, text = self.contribution_matrix(frame)
        bias, contributions = matrix[:, -1], matrix[:, :-1]
        values = np.column_stack([self.risk_.matrix(frame), text])
        columns = self.feature_columns
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :top]
        return Explanation(
            bias=bias,
            drivers=[
                [(columns[j], float(values[i, j]), float(contributions[i, j])) for j in order[i]]
                for i in range(len(values))
            ],
        )

    def explain_lines(self, frame: pd.DataFrame, top: int) -> list[list[LineDriver]]:
        """Per commit, the `top` added lines that push the text score up most, highest first (lines with
        no positive contribution are left out); scores are the text model's log-odds, before the blend
        weight (which scales every line alike)."""
        out = []
        for text, added in zip(self.documents(frame), frame["added_lines"], strict=True):
            lines = [str(x) for x in (added if added is not None else [])]
            scores = self.text_.line_scores(text, lines)
            ranked = np.argsort(-scores, kind="stable")[:top]
            out.append([LineDriver(int(i), lines[i], float(scores[i])) for i in ranked if scores[i] > 0])
        return out

    def importance(self) -> pd.DataFrame:
        """The booster's per-column importance (`gain`, `splits`), then the linear model's 20 tokens or
        standardised metrics of largest absolute weight (`coefficient`); `blend_weight` is each model's
        weight in the score."""
        booster = self.risk_.importance().assign(model="metrics", blend_weight=self.weights_[0])
        coef = self.text_.logistic_.coef_[0]
        names = np.concatenate([self.text_.vectorizer_.get_feature_names_out(), self.features])
        strongest = np.argsort(-np.abs(coef), kind="stable")[:20]
        text = pd.DataFrame(
            {"feature": names[strongest], "coefficient": coef[strongest], "model": "linear",
             "blend_weight": self.weights_[1]}
        )  # fmt: skip
        return pd.concat([booster, text], ignore_index=True)

    @property
    def feature_columns(self) -> list[str]:
        """The booster's columns (features, then ratios) and `code_risk`."""
        return [*self.risk_.feature_columns, CODE_RISK]
