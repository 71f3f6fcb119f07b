"""The risk API's fast path for a trained RiskModel: raw scores from the forest compiled to machine code by
lleaves (LLVM, through the llvmlite wheel: no system compiler), one row's contributions from LightGBM's
single-row fast predictor (the C API's `...SingleRowFast`, TreeSHAP as LightGBM computes it), the isotonic
calibrator as one `np.interp`. Answers equal RiskModel's own; a model that cannot be compiled is served by
LightGBM, and the reason is logged."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.risk_model import RATIOS, RiskModel

log = logging.getLogger(__name__)

# LightGBM's C API constants (c_api.h): predict types and the float64 data type.
_PREDICT_RAW_SCORE = 1
_PREDICT_CONTRIB = 3
_FLOAT64 = 1
COMPILED_DIR = "compiled"  # under the data root: one binary per model version and model text


@dataclass(frozen=True)
class Scored:
    """Rows of a base matrix (columns: the model's features) scored: the design matrix the booster sees,
    raw scores (log-odds), contributions in `columns_` order with the bias last, calibrated probabilities."""

    design: np.ndarray
    raw: np.ndarray
    contributions: np.ndarray
    probability: np.ndarray


class Scorer(Protocol):
    def score(self, base: np.ndarray) -> Scored: ...


class PlainScorer:
    """The reference: RiskModel's own methods (LightGBM's Python predict, sklearn's calibrator)."""

    def __init__(self, model: RiskModel) -> None:
        self.model = model

    def score(self, base: np.ndarray) -> Scored:
        raw = self.model.raw_score(base)
        return Scored(
            design=self.model.matrix(base),
            raw=raw,
            contributions=self.model.contribution_matrix(base),
            probability=self.model.calibrated_probability(raw),
        )


class _SingleRow:
    """LightGBM's single-row fast predictor of one kind (raw score or contributions), one thread: the
    configuration is parsed once instead of on every call, as Booster.predict does."""

    def __init__(self, booster: Any, kind: int, num_iteration: int, columns: int, width: int) -> None:
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._lib = _LIB
        self._handle = ctypes.c_void_p()
        self._width = width
        self._length = ctypes.c_int64()
        # LightGBM's predictor keeps per-thread buffers: one call at a time on a configuration
        self._lock = threading.Lock()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle,
                ctypes.c_int(kind),
                ctypes.c_int(0),
                ctypes.c_int(num_iteration),
                ctypes.c_int(_FLOAT64),
                ctypes.c_int32(columns),
                _c_str("num_threads=1"),
                ctypes.byref(self._handle),
            )
        )
        self._booster = booster  # the configuration points into it
        weakref.finalize(self, _LIB.LGBM_FastConfigFree, self._handle)

    def __call__(self, row: np.ndarray) -> np.ndarray:
        from lightgbm.basic import _safe_call

        row = np.ascontiguousarray(row, dtype=np.float64)
        out = np.empty(self._width, dtype=np.float64)
        with self._lock:
            _safe_call(
                self._lib.LGBM_BoosterPredictForMatSingleRowFast(
                    self._handle,
                    row.ctypes.data_as(ctypes.c_void_p),
                    ctypes.byref(self._length),
                    out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                )
            )
        return out


def _num_iteration(model: RiskModel) -> int:
    """The iterations RiskModel._predict uses (early stopping's best, else the booster's, else all: -1)."""
    best = getattr(model.booster_, "best_iteration_", None) or model.booster_.booster_.best_iteration
    return int(best) if best and best > 0 else -1


def _isotonic_thresholds(model: RiskModel) -> tuple[np.ndarray, np.ndarray] | None:
    """The isotonic calibrator's knots, when the model has one (sklearn's IsotonicRegression with
    out_of_bounds="clip" is linear interpolation between them); None for another calibrator."""
    fitted: Any = getattr(model.calibrator_, "model", None)
    if type(model.calibrator_).__name__ != "_Isotonic" or getattr(fitted, "out_of_bounds", None) != "clip":
        return None
    return np.asarray(fitted.X_thresholds_, dtype=float), np.asarray(fitted.y_thresholds_, dtype=float)


class FastScorer:
    """RiskModel's answers without its Python overhead: a compiled forest (`compiled`, None when it could
    not be built: LightGBM's single-row predictor and its batch predict with one thread instead)."""

    def __init__(self, model: RiskModel, compiled: Any | None, reason: str | None = None) -> None:
        self.model = model
        self.compiled = compiled
        self.reason = reason  # why there is no compiled forest
        self._booster = model.booster_.booster_
        self._iterations = _num_iteration(model)
        columns = len(model.columns_)
        self._contrib_row = _SingleRow(
            self._booster, _PREDICT_CONTRIB, self._iterations, columns, columns + 1
        )
        self._raw_row = _SingleRow(self._booster, _PREDICT_RAW_SCORE, self._iterations, columns, 1)
        self._knots = _isotonic_thresholds(model)
        # the ratio columns after the features (RiskModel.design), as positions in the base matrix
        position = {f: i for i, f in enumerate(model.features)}
        pairs = [RATIOS[c] for c in model.columns_[len(model.features) :]]
        self._numerators = np.array([position[num] for num, _ in pairs], dtype=np.intp)
        self._denominators = np.array([position[den] for _, den in pairs], dtype=np.intp)

    def raw_score(self, design: np.ndarray) -> np.ndarray:
        if self.compiled is not None:
            return np.asarray(self.compiled.predict(design, n_jobs=1), dtype=float)
        if len(design) == 1:
            return self._raw_row(design[0])
        return np.asarray(self._predict(design, raw_score=True), dtype=float)

    def contribution_matrix(self, design: np.ndarray) -> np.ndarray:
        if len(design) == 1:
            return self._contrib_row(design[0]).reshape(1, -1)
        return np.asarray(self._predict(design, pred_contrib=True), dtype=float)

    def calibrated_probability(self, raw: np.ndarray) -> np.ndarray:
        if self._knots is None:
            return self.model.calibrated_probability(raw)
        x, y = self._knots
        # _Isotonic.predict: the step function, plus its order-keeping tie-break, clipped to [0, 1]
        stepped = np.interp(np.clip(raw, x[0], x[-1]), x, y) if len(x) > 1 else np.full(len(raw), y[0])
        return np.clip(stepped + 1e-6 / (1.0 + np.exp(-raw)), 0.0, 1.0)

    def score(self, base: np.ndarray) -> Scored:
        design = self.design(base)
        raw = self.raw_score(design)
        return Scored(design, raw, self.contribution_matrix(design), self.calibrated_probability(raw))

    def design(self, base: np.ndarray) -> np.ndarray:
        """RiskModel.matrix's design, the same floating-point operations, with the ratio columns taken in one
        NumPy operation each instead of one per ratio (a tenth of one commit's scoring time)."""
        base = np.atleast_2d(np.asarray(base, dtype=np.float64))
        if not len(self._numerators):
            return np.ascontiguousarray(base)
        ratios = base[:, self._numerators] / (np.clip(base[:, self._denominators], 0, None) + 1.0)
        return np.ascontiguousarray(np.concatenate([base, ratios], axis=1))

    def _predict(self, design: np.ndarray, **kwargs: Any) -> np.ndarray:
        return np.asarray(
            self._booster.predict(design, num_iteration=self._iterations, num_threads=1, **kwargs)
        )


def compile_forest(model: RiskModel, cache_dir: Path, key: str) -> Any:
    """The model's forest compiled by lleaves to a raw-score function, cached in `cache_dir` under `key`
    and a hash of the model text (lleaves does not check a cache's staleness itself). Raises on failure."""
    import filelock
    import lleaves

    text = model.booster_.booster_.model_to_string(num_iteration=_num_iteration(model))
    digest = hashlib.sha256(f"{lleaves.__name__}:raw:{text}".encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_dir / f"{key}-{digest}"
    source, binary = stem.with_suffix(".txt"), stem.with_suffix(".bin")
    # several workers load the same version at once: one compiles, the others read its binary
    with filelock.FileLock(str(stem.with_suffix(".lock")), timeout=600):
        if not source.exists():
            source.write_text(text)
        compiled = lleaves.Model(model_file=str(source))
        # cache blocking helps wide batches but costs single rows (lleaves' docs): off
        compiled.compile(cache=str(binary), raw_score=True, fblocksize=max(1, compiled.num_trees()))
    return compiled


def fast_scorer(model: RiskModel, cache_dir: Path, key: str) -> FastScorer:
    """A FastScorer with the compiled forest, or without it (LightGBM), the reason logged as a warning."""
    try:
        compiled = compile_forest(model, cache_dir, key)
    except Exception as exc:  # any failure to compile leaves LightGBM serving, never no answer
        reason = (
            f"compiling {key} into {cache_dir} failed ({type(exc).__name__}: {exc}); serving with LightGBM"
        )
        log.warning(reason)
        return FastScorer(model, None, reason)
    return FastScorer(model, compiled)
