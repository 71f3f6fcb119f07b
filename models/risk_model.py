"""A calibrated LightGBM risk model with explanations, configured by a typed config and following the
scikit-learn estimator contract (configure in __init__, learn in fit, answer in predict_proba).

Training is time-ordered: the rows given to `fit` are split by time into train (oldest), validation (for
early stopping) and calibration (newest, for isotonic or Platt scaling), so the calibrator is always
fitted on a later slice than the booster. Class imbalance is handled by weighting positives by the
negative/positive ratio; recent rows can weigh more (`recency_weight`: the oldest row's weight is
exp(-recency_weight)), which helps when a project's defect patterns drift.

Explanations: `contributions` are LightGBM's per-feature contributions (`pred_contrib`) by feature name;
with the `bias` column they sum to the booster's raw margin (log-odds before calibration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from models.evaluation import best_f1_threshold


class ModelConfig(BaseModel):
    """Hyperparameters of a risk model; defaults are the values used in benchmarks/results."""

    n_estimators: int = Field(default=2000, ge=10, le=20_000)
    learning_rate: float = Field(default=0.02, gt=0, le=1)
    num_leaves: int = Field(default=15, ge=2, le=512)
    min_child_samples: int = Field(default=80, ge=1)
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.7, gt=0, le=1)
    reg_lambda: float = Field(default=5.0, ge=0)
    early_stopping_rounds: int = Field(default=100, ge=1)
    validation_share: float = Field(default=0.1, gt=0, lt=0.5)
    calibration_share: float = Field(default=0.1, gt=0, lt=0.5)
    calibration: Literal["isotonic", "platt"] = "isotonic"
    balance_classes: bool = True
    recency_weight: float = Field(default=1.0, ge=0, description="oldest row weighs exp(-this)")
    ratio_features: bool = Field(default=True, description="add Kamei-style relative churn ratios")
    seed: int = 0
    refit: bool = Field(
        default=True,
        description="refit on every training row with the iteration count early stopping chose "
        "(the calibrator stays the one fitted on held-out scores)",
    )


# Relative churn (Nagappan & Ball; Kamei et al. normalise la and ld by lt) and per-file ratios: trees
# split on one feature at a time and cannot form ratios themselves.
RATIOS = {
    "la_per_lt": ("la", "lt"),
    "ld_per_lt": ("ld", "lt"),
    "lt_per_nf": ("lt", "nf"),
    "la_per_nf": ("la", "nf"),
    "nuc_per_nf": ("nuc", "nf"),
    "rexp_per_exp": ("rexp", "exp"),
}


@dataclass(frozen=True)
class Explanation:
    """What drove each row's score: the bias (log-odds of an average row) and the top drivers as
    (column, input value, log-odds contribution), largest absolute contribution first."""

    bias: np.ndarray
    drivers: list[list[tuple[str, float, float]]]


class TooFewLabels(ValueError):
    """Not enough rows or positive labels to train and calibrate on."""


class BoosterTrainer(Protocol):
    """Fits one LightGBM classifier from estimator parameters: in this process, or across workers."""

    def fit(
        self,
        params: dict[str, Any],
        X: pd.DataFrame,
        y: np.ndarray,
        weight: np.ndarray,
        validation: tuple[pd.DataFrame, np.ndarray] | None = None,
        early_stopping_rounds: int | None = None,
    ) -> Any: ...


class LocalTrainer:
    """LightGBM's scikit-learn estimator in this process; with a validation set, early stopping on its AUC."""

    def fit(
        self,
        params: dict[str, Any],
        X: pd.DataFrame,
        y: np.ndarray,
        weight: np.ndarray,
        validation: tuple[pd.DataFrame, np.ndarray] | None = None,
        early_stopping_rounds: int | None = None,
    ) -> Any:
        import lightgbm as lgb

        model = lgb.LGBMClassifier(**params)
        if validation is None:
            return model.fit(X, y, sample_weight=weight)
        return model.fit(
            X,
            y,
            sample_weight=weight,
            eval_X=validation[0],
            eval_y=validation[1],
            eval_metric="auc",
            callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)]
            if early_stopping_rounds
            else None,
        )


class RiskModel:
    def __init__(self, features: list[str], config: ModelConfig | None = None, name: str = "risk") -> None:
        self.features = list(features)
        self.config = config or ModelConfig()
        self.name = name

    # --- features ---
    def design(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model's input columns: the declared features (missing ones are an error) plus ratios."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise KeyError(f"{self.name}: input lacks features {missing}")
        X = frame[self.features].astype(float)
        if self.config.ratio_features:
            extra = {
                name: X[num] / (X[den].clip(lower=0) + 1.0)
                for name, (num, den) in RATIOS.items()
                if num in X.columns and den in X.columns
            }
            X = X.assign(**extra)
        return X

    # --- learning ---
    def booster_params(self) -> dict[str, Any]:
        """The LightGBM estimator's parameters (scikit-learn names) for this config."""
        cfg = self.config
        return {
            "n_estimators": cfg.n_estimators,
            "learning_rate": cfg.learning_rate,
            "num_leaves": cfg.num_leaves,
            "min_child_samples": cfg.min_child_samples,
            "subsample": cfg.subsample,
            "subsample_freq": 1,
            "colsample_bytree": cfg.colsample_bytree,
            "reg_lambda": cfg.reg_lambda,
            "random_state": cfg.seed,
            "verbose": -1,
        }

    def fit(
        self,
        frame: pd.DataFrame,
        y: pd.Series | np.ndarray,
        times: pd.Series,
        trainer: BoosterTrainer | None = None,
    ) -> RiskModel:
        """Learn from time-ordered rows. `trainer` fits the boosters (the early-stopped one and the refit):
        LocalTrainer in this process by default, models.distributed.RayTrainer across a Ray cluster."""
        from models.evaluation import risk_reference, time_split

        y = np.asarray(y, dtype=int)
        self.__dict__.pop("_ratio_positions", None)  # columns are chosen again below
        if len(y) < 100 or y.sum() < 20 or (len(y) - y.sum()) < 20:
            raise TooFewLabels(
                f"{self.name}: {len(y)} labelled rows with {int(y.sum())} positives; need at least 100 rows "
                "and 20 of each class"
            )
        cfg = self.config
        split = time_split(
            pd.Series(times).reset_index(drop=True),
            test_share=cfg.calibration_share,
            validation_share=cfg.validation_share / (1 - cfg.calibration_share),
            calibration_share=0.0,
        )
        train, validation, calibration = split.train, split.validation, split.test
        X = self.design(frame.reset_index(drop=True))
        weights = self._weights(y[train], len(train))
        trainer = trainer or LocalTrainer()
        params = self.booster_params()
        self.booster_ = trainer.fit(
            params,
            X.iloc[train],
            y[train],
            weights,
            (X.iloc[validation], y[validation]),
            cfg.early_stopping_rounds,
        )
        self.columns_ = list(X.columns)
        raw = np.asarray(self.booster_.predict(X.iloc[calibration], raw_score=True), dtype=float)
        self.calibrator_ = _fit_calibrator(cfg.calibration, raw, y[calibration])
        self.threshold_ = best_f1_threshold(y[calibration], self.calibrator_.predict(raw))
        held = np.concatenate([validation, calibration])  # rows the booster did not fit
        held_raw = np.asarray(self.booster_.predict(X.iloc[held], raw_score=True), dtype=float)
        self.reference_ = risk_reference(self.calibrator_.predict(held_raw), y[held])
        if cfg.refit:  # the newest rows are the most like tomorrow's: train on them too
            # the same number of passes per row as early stopping chose on the smaller training slice
            best = self.booster_.best_iteration_ or cfg.n_estimators
            iterations = max(1, round(best * len(y) / len(train)))
            self.booster_ = trainer.fit(
                {**params, "n_estimators": iterations}, X, y, self._weights(y, len(y))
            )
        self.trained_rows_ = {
            "train": len(train),
            "validation": len(validation),
            "calibration": len(calibration),
        }
        return self

    def _weights(self, y: np.ndarray, n: int) -> np.ndarray:
        weights = np.exp(np.linspace(-self.config.recency_weight, 0.0, n))  # rows are in time order
        if self.config.balance_classes and y.sum():
            weights = np.where(y == 1, weights * (len(y) - y.sum()) / y.sum(), weights)
        return weights

    # --- answers (DataFrames by feature name, or matrices whose columns are `self.features`) ---
    def matrix(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """The design as a float matrix in `columns_` order: the hot path of serving, without pandas."""
        base = (
            X[self.features].to_numpy(dtype=float)
            if isinstance(X, pd.DataFrame)
            else np.asarray(X, dtype=float)
        )
        if base.ndim == 1:
            base = base.reshape(1, -1)
        extra = [base[:, num] / (np.clip(base[:, den], 0, None) + 1.0) for num, den in self._ratio_index()]
        return np.column_stack([base, *extra]) if extra else base

    def _ratio_index(self) -> list[tuple[int, int]]:
        """(numerator, denominator) positions of the ratio columns in `features`, computed once per fitted
        model: rebuilding them on every call was a quarter of the one-commit scoring time."""
        cached: list[tuple[int, int]] | None = self.__dict__.get("_ratio_positions")
        if cached is None:
            index = {f: i for i, f in enumerate(self.features)}
            cached = [(index[num], index[den]) for num, den in self._ratios]
            self.__dict__["_ratio_positions"] = cached
        return cached

    @property
    def _ratios(self) -> list[tuple[str, str]]:
        return [RATIOS[c] for c in self.columns_[len(self.features) :]]

    def _predict(self, X, **kwargs) -> np.ndarray:
        best = getattr(self.booster_, "best_iteration_", None) or None
        return np.asarray(self.booster_.booster_.predict(self.matrix(X), num_iteration=best, **kwargs))

    def raw_score(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return self._predict(X, raw_score=True)

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Calibrated probability of the positive class, one per row."""
        return self.calibrator_.predict(self.raw_score(X))

    def calibrated_probability(self, raw: np.ndarray) -> np.ndarray:
        """The calibrated probability of raw scores (log-odds from `raw_score`), without a second pass
        through the booster."""
        return np.asarray(self.calibrator_.predict(np.asarray(raw, dtype=float)), dtype=float)

    @property
    def feature_columns(self) -> list[str]:
        """The columns the booster sees, in order: `features`, then the ratios derived from them."""
        return list(self.columns_)

    def explain(self, X: pd.DataFrame | np.ndarray, top: int) -> Explanation:
        """Per row, the `top` columns by absolute contribution to the raw score (stable order on ties),
        with the column's input value; and the bias. With every column, bias + Σ contributions = raw score."""
        contributions = self.contribution_matrix(X)
        bias = contributions[:, -1]
        contributions = contributions[:, :-1]
        design = self.matrix(X)
        order = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :top]
        columns = self.columns_
        return Explanation(
            bias=bias,
            drivers=[
                [(columns[j], float(design[i, j]), float(contributions[i, j])) for j in order[i]]
                for i in range(len(design))
            ],
        )

    def contribution_matrix(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Contributions in `columns_` order plus a last column, the bias; rows sum to raw_score."""
        return self._predict(X, pred_contrib=True)

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-feature contributions to the raw margin (log-odds), plus `bias`; rows sum to raw_score."""
        return pd.DataFrame(
            self.contribution_matrix(frame), columns=[*self.columns_, "bias"], index=frame.index
        )

    def importance(self) -> pd.DataFrame:
        booster = self.booster_.booster_
        return (
            pd.DataFrame(
                {
                    "feature": self.columns_,
                    "gain": booster.feature_importance("gain"),
                    "splits": booster.feature_importance("split"),
                }
            )
            .sort_values("gain", ascending=False)
            .reset_index(drop=True)
        )


class _Isotonic:
    def __init__(self, raw: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        # Laplace bounds: with n calibration rows, no step may claim a probability below 1/(n+2) or above
        # (n+1)/(n+2) — a calibrated 0 or 1 is a claim the data cannot support.
        bound = 1.0 / (len(y) + 2)
        self.model = IsotonicRegression(out_of_bounds="clip", y_min=bound, y_max=1 - bound).fit(raw, y)

    def predict(self, raw: np.ndarray) -> np.ndarray:
        # Isotonic regression is a step function: within a step, keep the booster's order with a
        # strictly increasing term far below any calibration error (1e-6), so ranking metrics are kept.
        tie_break = 1e-6 / (1.0 + np.exp(-np.asarray(raw, dtype=float)))
        return np.clip(self.model.predict(raw) + tie_break, 0.0, 1.0)


class _Platt:
    def __init__(self, raw: np.ndarray, y: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=1e6).fit(raw.reshape(-1, 1), y)

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(np.asarray(raw).reshape(-1, 1))[:, 1]


def _fit_calibrator(kind: str, raw: np.ndarray, y: np.ndarray):
    return _Isotonic(raw, y) if kind == "isotonic" else _Platt(raw, y)
