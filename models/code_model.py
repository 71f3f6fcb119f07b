"""A change-risk model that reads the code: a linear model on the tokens of the diff and the message
(JITLine, Pornprasit & Tantithamthavorn, MSR 2021) whose out-of-fold score, computed in time order, becomes
the `code_risk` feature of the metrics LightGBM (stacking, Wolpert 1992); added lines are ranked by the
linear model's token weights, as JITLine ranks lines."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from features.code_tokens import CODE_COLUMNS, commit_text, line_tokens
from models.risk_model import Explanation, ModelConfig, RiskModel

CODE_RISK = "code_risk"


class CodeModelConfig(BaseModel):
    """The text model's settings and the metrics model's (the project's RiskModel)."""

    metrics: ModelConfig = Field(default_factory=ModelConfig)
    text_folds: int = Field(default=10, ge=2, le=50, description="time-ordered folds for out-of-fold scores")
    min_df: int = Field(default=3, ge=1, description="a token must occur in this many training commits")
    C: float = Field(default=1.0, gt=0, description="inverse L2 strength of the text logistic regression")


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


def documents(frame: pd.DataFrame) -> list[str]:
    missing = [c for c in CODE_COLUMNS if c not in frame.columns]
    if missing:
        raise KeyError(f"input lacks code columns {missing}")
    return [
        commit_text(list(a) if a is not None else [], list(r) if r is not None else [], m or "")
        for a, r, m in zip(frame["added_lines"], frame["removed_lines"], frame["message"], strict=True)
    ]


class TextRiskModel:
    """TF-IDF (sublinear counts) of prefixed tokens and a class-balanced logistic regression."""

    def __init__(self, min_df: int = 3, C: float = 1.0) -> None:
        self.min_df = min_df
        self.C = C

    def fit(self, texts: list[str], y: np.ndarray) -> TextRiskModel:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        min_df = min(self.min_df, max(1, len(texts) // 10))
        self.vectorizer_ = TfidfVectorizer(
            token_pattern=r"\S+", lowercase=False, min_df=min_df, sublinear_tf=True, dtype=np.float32
        )
        X = self.vectorizer_.fit_transform(texts)
        self.vectorizer_.__dict__.pop("stop_words_", None)  # every pruned token: large, never used
        self.logistic_ = LogisticRegression(C=self.C, solver="liblinear", class_weight="balanced").fit(X, y)
        return self

    def score(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.logistic_.decision_function(self.vectorizer_.transform(texts)), dtype=float)

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


class CodeRiskModel:
    """Metrics + what the diff and message say; the public surface mirrors RiskModel's."""

    def __init__(self, features: list[str], config: CodeModelConfig | None = None, name: str = "risk-code"):
        self.features = list(features)
        self.config = config or CodeModelConfig()
        self.name = name

    @property
    def input_columns(self) -> list[str]:
        """Every column `predict_proba` reads: the metric features and the code columns."""
        return [*self.features, *CODE_COLUMNS]

    def out_of_fold_scores(self, texts: list[str], y: np.ndarray) -> np.ndarray:
        """Text scores of rows in time order, each from a text model fitted on older rows only (NaN for the
        first block, which LightGBM treats as missing)."""
        scores = np.full(len(texts), np.nan)
        for fit_rows, score_rows in time_folds(len(texts), self.config.text_folds):
            if y[fit_rows].sum() == 0 or y[fit_rows].sum() == len(fit_rows):
                continue  # one class only: no model to fit yet
            model = TextRiskModel(self.config.min_df, self.config.C).fit(
                [texts[i] for i in fit_rows], y[fit_rows]
            )
            scores[score_rows] = model.score([texts[i] for i in score_rows])
        return scores

    def fit(self, frame: pd.DataFrame, y: pd.Series | np.ndarray, times: pd.Series) -> CodeRiskModel:
        order = np.argsort(pd.to_datetime(pd.Series(times)).to_numpy(), kind="stable")
        frame = frame.reset_index(drop=True).iloc[order].reset_index(drop=True)
        y = np.asarray(y, dtype=int)[order]
        times = pd.Series(times).reset_index(drop=True).iloc[order].reset_index(drop=True)
        texts = documents(frame)
        oof = self.out_of_fold_scores(texts, y)
        self.text_ = TextRiskModel(self.config.min_df, self.config.C).fit(texts, y)
        self.risk_ = RiskModel([*self.features, CODE_RISK], self.config.metrics, name=self.name)
        self.risk_.fit(frame[self.features].assign(**{CODE_RISK: oof}), y, times)
        self.threshold_ = self.risk_.threshold_
        self.reference_ = self.risk_.reference_
        self.trained_rows_ = self.risk_.trained_rows_
        return self

    def code_risk(self, frame: pd.DataFrame) -> np.ndarray:
        return self.text_.score(documents(frame))

    def design(self, frame: pd.DataFrame) -> pd.DataFrame:
        return frame[self.features].astype(float).assign(**{CODE_RISK: self.code_risk(frame)})

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        return self.risk_.raw_score(self.design(frame))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.risk_.predict_proba(self.design(frame))

    def explain(self, frame: pd.DataFrame, top: int) -> Explanation:
        """Feature drivers as RiskModel's, with the text score as the `code_risk` driver."""
        return self.risk_.explain(self.design(frame), top)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = self.risk_.contributions(self.design(frame).set_axis(frame.index))
        return out

    def explain_lines(self, frame: pd.DataFrame, top: int) -> list[list[LineDriver]]:
        """Per commit, the `top` added lines that push the text score up most, highest first (lines with
        no positive contribution are left out)."""
        out = []
        for text, added in zip(documents(frame), frame["added_lines"], strict=True):
            lines = [str(x) for x in (added if added is not None else [])]
            scores = self.text_.line_scores(text, lines)
            ranked = np.argsort(-scores, kind="stable")[:top]
            out.append([LineDriver(int(i), lines[i], float(scores[i])) for i in ranked if scores[i] > 0])
        return out

    @property
    def feature_columns(self) -> list[str]:
        return self.risk_.feature_columns
