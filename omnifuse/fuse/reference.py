"""Reference learners: simple scikit-learn models on the cache's features, beside every fusion method.

A reader must be able to tell whether fusion earns its cost: ``logreg`` (logistic regression) and ``gbm``
(scikit-learn's ``HistGradientBoostingClassifier``) are registered like methods (registry kind
``"reference"``) and run on the same folds, rows and masks through :func:`omnifuse.fuse.fold.run_fold`, so every
table and test treats them alike. Their features (:func:`reference_features`), per modality:

- ``vector`` [D]: the pooled embedding as it is; ``sequence`` [L, D]: the mean over valid tokens;
- ``timeseries`` [T, F]: per channel the last observed value, the mean, min and max of the observed values and
  the count of observations (5 F columns);
- ``tabular`` [F]: the values as they are;
- one missingness indicator per modality (1 present, 0 missing); a missing modality's features are NaN.

Raw clinical values (tabular, time series) are first clipped to the fold's training clip bounds (those of
:class:`omnifuse.fuse.data.Normalizer`). ``gbm`` takes NaN natively: learning rate 0.05, 63 bins, at most 500
trees with early stopping on 10 % of the training rows (20 rounds without improvement); a fixed 200 trees took
16 times as long on the eICU demo (60 s a fold on one core). ``logreg`` imputes the training mean, standardises,
and chooses its L2 strength among ``Cs`` by the log loss of a patient-grouped 5-fold cross-validation inside the
training rows (``LogisticRegressionCV``; C = 1 alone overfits the demo's 1,368 features). Nothing is chosen on
test rows. Binary and multiclass tasks fit one model; multilabel tasks one model per label (a label with a
single class in the training rows predicts its training rate). scikit-learn's threads are limited to torch's
thread count (a study's worker runs one thread).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.data import FuseData, Normalizer
from omnifuse.fuse.registry import register_reference

LEARNERS = ("logreg", "gbm")


def _clip(x: np.ndarray, norm: Normalizer, name: str) -> np.ndarray:
    st = norm.stats[name]
    lo = np.array([-np.inf if v is None else v for v in st.get("low") or [None] * x.shape[-1]], dtype=np.float32)
    hi = np.array([np.inf if v is None else v for v in st.get("high") or [None] * x.shape[-1]], dtype=np.float32)
    return np.where(np.isfinite(x), np.clip(x, lo, hi), np.nan)


def _series_summary(x: np.ndarray) -> np.ndarray:
    """[n, T, F] with NaN = not observed -> [n, 5 F]: last observed, mean, min, max, count per channel."""
    obs = np.isfinite(x)
    count = obs.sum(1).astype(np.float32)
    t_idx = np.where(obs, np.arange(x.shape[1])[None, :, None], -1).max(1)  # [n, F]
    last = np.take_along_axis(np.nan_to_num(x), np.maximum(t_idx, 0)[:, None, :], 1)[:, 0]
    last = np.where(t_idx >= 0, last, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels: NaN, as wanted
        mean, lo, hi = np.nanmean(x, 1), np.nanmin(x, 1), np.nanmax(x, 1)
    return np.concatenate([last, mean, lo, hi, count], axis=1).astype(np.float32)


def reference_features(
    data: FuseData,
    rows: np.ndarray,
    norm: Normalizer,
    mask: torch.Tensor | None = None,
) -> np.ndarray:
    """The reference learners' feature matrix [len(rows), P] (see the module docstring). ``mask``
    [len(rows), M] may remove modalities (a combination): they read as missing."""
    present = data.mask[torch.as_tensor(rows, device=data.device)].cpu().numpy()
    if mask is not None:
        present = present & mask.cpu().numpy().astype(bool)
    blocks = []
    for j, name in enumerate(data.modalities):
        kind = data.kinds[name]
        x = data.x[name][torch.as_tensor(rows, device=data.device)].float().cpu().numpy()
        if kind == "sequence":
            tm = data.tokens_mask[name][torch.as_tensor(rows, device=data.device)].cpu().numpy()[..., None]
            f = (x * tm).sum(1) / np.maximum(tm.sum(1), 1)
        elif kind == "timeseries":
            f = _series_summary(_clip(x, norm, name))
        elif kind == "tabular":
            f = _clip(x, norm, name)
        else:
            f = x
        f = np.where(present[:, j : j + 1], f, np.nan).astype(np.float32)
        blocks += [f, present[:, j : j + 1].astype(np.float32)]
    return np.concatenate(blocks, axis=1)


class ReferenceLearner:
    """A scikit-learn model behind the registry (kind ``"reference"``): ``learner`` ``"logreg"`` or ``"gbm"``.

    ``fit(data, rows, norm)`` then ``predict_proba(data, rows, norm, mask=None) -> [n, C]`` (binary: [n, 1], the
    positive class; multilabel: per label; multiclass: per class)."""

    def __init__(
        self,
        info: ModelInfo,
        learner: str = "gbm",
        seed: int = 0,
        Cs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0),
        max_iter: int = 500,
        learning_rate: float = 0.05,
    ) -> None:
        if learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {learner!r}")
        self.info, self.learner, self.seed = info, learner, seed
        self.Cs, self.max_iter, self.learning_rate = tuple(Cs), int(max_iter), float(learning_rate)
        self.models: list[Any] = []
        self.constant: list[float | None] = []

    def _new(self, groups: np.ndarray, y: np.ndarray) -> Any:
        if self.learner == "gbm":
            return HistGradientBoostingClassifier(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_bins=63,
                early_stopping=True,
                n_iter_no_change=20,
                validation_fraction=0.1,
                random_state=self.seed,
            )
        k = int(min(5, np.unique(groups).size, np.unique(y, return_counts=True)[1].min()))
        lr: Any = LogisticRegression(C=0.01, max_iter=2000)
        if k >= 2:
            cv = list(GroupKFold(n_splits=k).split(y, y, groups))
            lr = LogisticRegressionCV(Cs=list(self.Cs), cv=cv, scoring="neg_log_loss", max_iter=2000)
        return make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler(), lr)

    def fit(self, data: FuseData, rows: np.ndarray, norm: Normalizer) -> ReferenceLearner:
        rows = rows[data.y_mask[torch.as_tensor(rows, device=data.device)].cpu().numpy()]
        x = reference_features(data, rows, norm)
        y = data.labels_numpy(rows)
        groups = data.subject_id[rows]
        targets = [y] if self.info.task_kind == "multiclass" else [y[:, c] for c in range(y.shape[1])]
        self.models, self.constant = [], []
        with threadpool_limits(limits=torch.get_num_threads()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notices about future defaults
            for t in targets:
                if np.unique(t).size < 2:
                    self.models.append(None)
                    self.constant.append(float(np.mean(t)))
                    continue
                self.models.append(self._new(groups, t).fit(x, t))
                self.constant.append(None)
        return self

    def predict_proba(
        self, data: FuseData, rows: np.ndarray, norm: Normalizer, mask: torch.Tensor | None = None
    ) -> np.ndarray:
        x = reference_features(data, rows, norm, mask)
        with threadpool_limits(limits=torch.get_num_threads()):
            return self._predict(x, len(rows))

    def _predict(self, x: np.ndarray, n: int) -> np.ndarray:
        if self.info.task_kind == "multiclass":
            model = self.models[0]
            out = np.zeros((n, self.info.num_outputs), dtype=np.float32)
            if model is None:
                out[:, int(self.constant[0] or 0)] = 1.0
                return out
            out[:, model.classes_.astype(int)] = model.predict_proba(x)
            return out
        cols = [
            np.full(n, c, dtype=np.float32) if m is None else m.predict_proba(x)[:, 1]
            for m, c in zip(self.models, self.constant, strict=True)
        ]
        return np.stack(cols, axis=1).astype(np.float32)


register_reference(
    "logreg",
    functools.partial(ReferenceLearner, learner="logreg"),
    description="Reference: logistic regression on the cached features (summaries of time series, "
    "pooled embeddings, tabular values, missingness indicators)",
    paper="reference learner (scikit-learn LogisticRegression)",
)
register_reference(
    "gbm",
    functools.partial(ReferenceLearner, learner="gbm"),
    description="Reference: gradient boosting (HistGradientBoosting) on the same features",
    paper="reference learner (scikit-learn HistGradientBoostingClassifier)",
)
