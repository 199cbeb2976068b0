"""Reference learners: simple scikit-learn models on the cache's features, beside every fusion method.

A reader must be able to tell whether fusion earns its cost: ``logreg`` (logistic regression) and ``gbm``
(scikit-learn's ``HistGradientBoostingClassifier``) are registered like methods (registry kind
``"reference"``) and run on the same folds, rows and masks through :func:`omnifuse.fuse.fold.run_fold`, so every
table and test treats them alike. Their features (:func:`reference_features`), per modality:

- ``vector`` [D]: the pooled embedding as it is; ``sequence`` [L, D]: the mean over valid tokens;
- ``timeseries`` [T, F]: per channel the last observed value, the mean, min and max of the observed values and
  the count of observations (5 F columns); the padding of a variable-length series (steps outside its step
  mask, ``FuseData.tokens_mask``) is not observed, so a row's summary is the same whatever its padded length;
- ``tabular`` [F]: the values as they are; a categorical column (the cache's ``categorical:<n>``, transform
  ``categorical`` of a version-3 normaliser) keeps its code 0..n-1 (NaN missing) and is declared categorical
  to the learner (:func:`categorical_columns`): one-hot for ``logreg`` (missing and unseen codes: all zeros),
  native categorical splits for ``gbm`` (``categorical_features``; a column with more than
  :data:`GBM_MAX_CATEGORIES` categories keeps its most frequent training categories and pools the rest in one
  "other" category), so codes are never read as ordered numbers;
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
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from omnifuse.fuse.base import ModelInfo
from omnifuse.fuse.data import FuseData, Normalizer
from omnifuse.fuse.registry import register_reference

LEARNERS = ("logreg", "gbm")

GBM_BINS = 63
GBM_MAX_CATEGORIES = GBM_BINS - 1
"""``HistGradientBoostingClassifier`` needs categorical codes below ``max_bins``: a column with more categories
keeps its ``GBM_MAX_CATEGORIES - 1`` most frequent training categories (codes by frequency) and maps the others
to one "other" code."""


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
            x = _clip(x, norm, name)
            if name in data.tokens_mask:  # a variable-length series: its padding is not observed
                steps = data.tokens_mask[name][torch.as_tensor(rows, device=data.device)].cpu().numpy()
                x = np.where(steps[..., None], x, np.nan)
            f = _series_summary(x)
        elif kind == "tabular":
            f = _clip(x, norm, name)
        else:
            f = x
        f = np.where(present[:, j : j + 1], f, np.nan).astype(np.float32)
        blocks += [f, present[:, j : j + 1].astype(np.float32)]
    return np.concatenate(blocks, axis=1)


def categorical_columns(data: FuseData, norm: Normalizer) -> list[tuple[int, int]]:
    """(column in :func:`reference_features`' matrix, number of categories) of every categorical column: the
    tabular columns a version-3 normaliser transforms as ``categorical`` (none with an older one)."""
    out, pos = [], 0
    for name in data.modalities:
        kind, st = data.kinds[name], norm.stats[name]
        if kind == "tabular":
            for c, (t, n) in enumerate(zip(st.get("transform") or [], st.get("n_categories") or [], strict=True)):
                if t == "categorical":
                    out.append((pos + c, int(n)))
        f = data.x[name].shape[-1]
        pos += (5 * f if kind == "timeseries" else f) + 1
    return out


def _gbm_codes(x: np.ndarray, cats: list[tuple[int, int]], maps: list[np.ndarray] | None) -> list[np.ndarray]:
    """The lookup (code -> gbm code, -1 missing) of every categorical column, fitted on ``x`` when ``maps`` is
    None; applies them to ``x`` in place (codes outside 0..n-1 and NaN read as missing)."""
    out = []
    for i, (j, n) in enumerate(cats):
        v = x[:, j]
        ok = np.isfinite(v) & (v >= 0) & (v < n) & (v == np.round(v))
        code = np.where(ok, v, 0).astype(np.int64)
        if maps is None:
            lut = np.arange(n, dtype=np.int64)
            if n > GBM_MAX_CATEGORIES:
                freq = np.bincount(code[ok], minlength=n)
                order = np.argsort(-freq, kind="stable")
                lut = np.full(n, GBM_MAX_CATEGORIES - 1, dtype=np.int64)
                lut[order[: GBM_MAX_CATEGORIES - 1]] = np.arange(GBM_MAX_CATEGORIES - 1)
        else:
            lut = maps[i]
        x[:, j] = np.where(ok, lut[code], np.nan)
        out.append(lut)
    return out


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
        self.categorical: list[tuple[int, int]] = []
        self.gbm_maps: list[np.ndarray] = []

    def _new(self, groups: np.ndarray, y: np.ndarray, width: int) -> Any:
        cats = self.categorical
        if self.learner == "gbm":
            is_cat = np.zeros(width, dtype=bool)
            is_cat[[j for j, _ in cats]] = True
            return HistGradientBoostingClassifier(
                max_iter=self.max_iter,
                learning_rate=self.learning_rate,
                max_bins=GBM_BINS,
                categorical_features=is_cat if cats else None,
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
        numeric = make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True), StandardScaler())
        if not cats:
            return make_pipeline(numeric, lr)
        cat_idx = [j for j, _ in cats]
        onehot = OneHotEncoder(
            categories=[np.arange(n, dtype=np.float64) for _, n in cats], handle_unknown="ignore", sparse_output=False
        )
        cols = ColumnTransformer(
            [("numeric", numeric, [j for j in range(width) if j not in set(cat_idx)]), ("onehot", onehot, cat_idx)]
        )
        return make_pipeline(cols, lr)

    def _features(self, data: FuseData, rows: np.ndarray, norm: Normalizer, mask: torch.Tensor | None = None):
        """The feature matrix with the categorical columns prepared for the learner (gbm: its codes)."""
        x = reference_features(data, rows, norm, mask)
        if self.learner == "gbm" and self.categorical:
            _gbm_codes(x, self.categorical, self.gbm_maps)
        return x

    def fit(self, data: FuseData, rows: np.ndarray, norm: Normalizer) -> ReferenceLearner:
        rows = rows[data.y_mask[torch.as_tensor(rows, device=data.device)].cpu().numpy()]
        self.categorical = categorical_columns(data, norm)
        x = reference_features(data, rows, norm)
        if self.learner == "gbm" and self.categorical:
            self.gbm_maps = _gbm_codes(x, self.categorical, None)
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
                self.models.append(self._new(groups, t, x.shape[1]).fit(x, t))
                self.constant.append(None)
        return self

    def predict_proba(
        self, data: FuseData, rows: np.ndarray, norm: Normalizer, mask: torch.Tensor | None = None
    ) -> np.ndarray:
        x = self._features(data, rows, norm, mask)
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
