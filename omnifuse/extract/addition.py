"""Adding modalities to a finished cache (``omnifuse extract --add-modality NAME``): the checks and the new spec.

An addition encodes one or more of the dataset's modalities into an existing store, and nothing else: the
other modalities' arrays are not written (byte for byte the same afterwards), so adding a report section to
a cache costs the encoding of that section only. ``--modality-name NEW`` stores the dataset's modality under
another name: the same input under another encoder or pooling beside the first.

Before anything is written, rank 0 checks (each refusal is one line naming the store and what differs):

- the store exists, is an omnifuse cache, and comes from the same dataset and version;
- the dataset's stays are the cache's, in the same order (the first differing stay is named; a cache made
  with ``--limit N`` is compared with the dataset's first N stays unless ``--limit`` is given);
- it has the cache's tasks, references and splits (labels that changed are rewritten, as on any resume);
- every modality the cache holds is still a modality of the dataset as configured now (for a manifest:
  the spec keeps the cache's modalities and adds the new one), with the same definition (array inputs:
  shape, features, ranges), every block written, and inputs unchanged since they were encoded: the recorded
  ``adapter_options`` then describe the whole store, and no modality is stale next to the new one;
- a name the cache has is added again only to resume the same addition (same dataset modality, encoder,
  weights, preprocessing and shape); ``--overwrite`` replaces it instead (that modality only).

The new spec lists the cache's modalities in their order, with a modality of the dataset's own name
inserted where the dataset lists it (after the nearest modality before it that the cache has) and one
stored under another name last; the dataset's options become the store's ``adapter_options``. So adding a
modality to a cache gives the store (and the fingerprint) that extracting everything at once gives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from omnifuse.cache import CacheError, CacheSpec, CacheWriter, ModalitySpec, store
from omnifuse.cache.meta import additions, read_meta
from omnifuse.extract.datasets.base import Adapter, Cohort, Item, RawModality, Skip
from omnifuse.extract.inputs import input_hashes

Action = Literal["new", "resume", "replace"]


class AdditionError(CacheError):
    """A modality cannot be added to the store as asked (the message is one line naming the store)."""


@dataclass(frozen=True)
class Request:
    """One modality to add: ``name`` in the cache, ``raw`` the dataset's modality it encodes (``raw.name``
    is the dataset's name for it, its ``source``)."""

    name: str
    raw: RawModality

    @property
    def source(self) -> str:
        return self.raw.name

    def as_stored(self) -> RawModality:
        """The dataset's modality under its name in the cache (for ``build_spec`` and the encoding pass)."""
        return replace(self.raw, name=self.name)


def read_store(out: Path) -> dict[str, Any]:
    """The attributes of the store to add to; :class:`AdditionError` when there is none."""
    if not out.exists():
        raise AdditionError(
            f"no cache at {out}: --add-modality adds to an existing cache; run `omnifuse extract` without it to "
            "create one"
        )
    return read_meta(out)


def requests(
    out: Path, names: Sequence[str], modality_name: str | None, raws_all: Sequence[RawModality]
) -> list[Request]:
    """The modalities to add, checked against the dataset's: known, with a source, given once."""
    by_name = {r.name: r for r in raws_all}
    if not names:
        raise AdditionError(f"{out}: --add-modality needs the name of a modality of the dataset")
    if len(set(names)) != len(names):
        raise AdditionError(f"{out}: --add-modality names a modality twice: {list(names)}")
    out_list = []
    for name in names:
        raw = by_name.get(name)
        if raw is None:
            raise AdditionError(
                f"{out}: the dataset has no modality {name!r} to add; it has {', '.join(by_name) or 'none'}"
            )
        if not raw.available:
            raise AdditionError(f"{out}: modality {name!r} cannot be added: {raw.absent_reason or 'no source'}")
        out_list.append(Request(modality_name or name, raw))
    return out_list


def stored_limit(spec: CacheSpec) -> int | None:
    """The ``--limit`` the cache was extracted with (``spec.extra["limit"]``), if any."""
    value = spec.extra.get("limit")
    return int(value) if isinstance(value, int) else None


def check_dataset(out: Path, spec: CacheSpec, adapter: Adapter) -> None:
    """The store must come from the adapter's dataset and version."""
    if spec.dataset != adapter.name or spec.dataset_version != str(adapter.version):
        raise AdditionError(
            f"{out} holds dataset {spec.dataset!r} version {spec.dataset_version!r}, not {adapter.name!r} version "
            f"{str(adapter.version)!r}; --add-modality adds to a cache of the same dataset"
        )


def check_rows(out: Path, writer: CacheWriter, cohort: Cohort) -> None:
    """The dataset's stays (and their patients) must be the cache's, row for row: else one line naming the
    first stay that differs."""
    cached = np.asarray(store.array(writer.group, "stay_id")[:]).astype(np.int64)
    given = np.asarray(cohort.stay_id).astype(np.int64)
    n = min(cached.size, given.size)
    differ = np.flatnonzero(cached[:n] != given[:n])
    hint = "; --add-modality needs the cache's stays in the cache's order"
    if differ.size:
        i = int(differ[0])
        raise AdditionError(
            f"{out}: row {i + 1} is stay_id {int(given[i])} in the dataset but stay_id {int(cached[i])} in the "
            f"cache{hint}"
        )
    if cached.size != given.size:
        if given.size > n:
            where = f"the dataset has {given.size} stays, the cache {cached.size}: stay_id {int(given[n])} "
            where += f"(row {n + 1}) is not in the cache"
        else:
            where = f"the dataset has {given.size} stays, the cache {cached.size}: stay_id {int(cached[n])} "
            where += f"(row {n + 1}) is not in the dataset"
        raise AdditionError(f"{out}: {where}{hint} (a cache made with --limit takes the same --limit)")
    subjects = store.as_str_array(store.array(writer.group, "subject_id")[:])
    other = np.flatnonzero(subjects != np.asarray(cohort.subject_id).astype(str))
    if other.size:
        i = int(other[0])
        raise AdditionError(f"{out}: stay_id {int(given[i])} (row {i + 1}) belongs to another subject in the dataset")


def check_cohort(out: Path, spec: CacheSpec, cohort: Cohort) -> None:
    """The dataset must have the cache's tasks (same kind and classes), references and splits."""
    mine = sorted((t.name, t.kind, tuple(t.classes)) for t in spec.tasks)
    theirs = sorted((t.name, t.kind, tuple(t.classes)) for t in cohort.tasks)
    for what, a, b in (
        ("tasks", mine, theirs),
        ("references", sorted(spec.references), sorted(cohort.references)),
        ("splits", sorted(spec.splits), sorted(cohort.splits)),
    ):
        if a != b:
            raise AdditionError(
                f"{out}: the dataset's {what} {b} are not the cache's {a}; --add-modality adds modalities only: "
                "extract the dataset again (another --out) to change them"
            )


def _modality_json(m: ModalitySpec) -> dict[str, Any]:
    d: dict[str, Any] = CacheSpec("", "", [m]).to_json()["modalities"][0]
    return d


def modality_differences(stored: ModalitySpec, new: ModalitySpec) -> list[str]:
    """The properties (``encoder``, ``encoder_hash``, ``preprocessing.pooling``...) in which ``new`` differs
    from ``stored``."""
    a, b = _modality_json(stored), _modality_json(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k == "name" or a.get(k) == b.get(k):
            continue
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += [f"{k}.{j}" for j in sorted(set(a[k]) | set(b[k])) if a[k].get(j) != b[k].get(j)]
        else:
            out.append(k)
    return out


def plan(
    out: Path, writer: CacheWriter, reqs: Sequence[Request], specs: dict[str, ModalitySpec] | None, overwrite: bool
) -> dict[str, Action]:
    """Per modality to add: ``new`` (the cache has no such name), ``resume`` (the same addition again: the
    name was added from the same dataset modality with the same spec) or ``replace`` (``overwrite``).
    Anything else is refused, naming what differs. ``specs`` (the new modalities' specs, known once their
    encoders are built): ``None`` checks everything but the spec (before the encoders are built)."""
    records = additions(read_meta(out))
    have = {m.name: m for m in writer.spec.modalities}
    actions: dict[str, Action] = {}
    for q in reqs:
        if q.name not in have:
            actions[q.name] = "new"
            continue
        if overwrite:
            actions[q.name] = "replace"
            continue
        record = records.get(q.name)
        if record is None:
            raise AdditionError(
                f"{out} already has modality {q.name!r} (encoder {have[q.name].encoder or 'none'}), from its "
                f"extraction; add the input under another name (--modality-name {q.name}_2), or replace it "
                "with --overwrite (that modality only)"
            )
        if record.get("source") != q.source:
            raise AdditionError(
                f"{out}: modality {q.name!r} was added from the dataset's {record.get('source')!r}, not {q.source!r}; "
                "choose another --modality-name, or replace it with --overwrite"
            )
        diff = [] if specs is None else modality_differences(have[q.name], specs[q.name])
        if diff:
            raise AdditionError(
                f"{out}: modality {q.name!r} was added with another {', '.join(diff)}; run the same command as "
                "then to resume it, choose another --modality-name, or replace it with --overwrite"
            )
        actions[q.name] = "resume"
    return actions


def changed_rows(
    writer: CacheWriter, name: str, kind: str, inputs: Callable[[int, int], Sequence[Item | Skip | None]]
) -> np.ndarray:
    """Rows of the done blocks of ``name`` whose input (as ``inputs(start, stop)`` gives it now, of the input
    kind ``kind``) differs from the fingerprint stored with it."""
    stored = writer.input_hashes(name)
    done = writer.done_blocks(name)
    rows = []
    for k, (start, stop) in enumerate(writer.iter_blocks(name)):
        if done[k]:
            now = input_hashes(kind, inputs(start, stop))
            rows.append(start + np.flatnonzero(now != stored[start:stop]))
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def check_others(
    out: Path,
    writer: CacheWriter,
    raws: Sequence[RawModality],
    arrays: CacheSpec,
    skip: set[str],
    inputs: Callable[[str, int, int], Sequence[Item | Skip | None]],
) -> None:
    """Every modality of the cache but ``skip`` (those being added now) must come from a modality of the
    dataset as configured now (its own name, or the recorded source of an addition), with the same definition
    (array inputs: the spec ``arrays`` built from the dataset), every block written (a modality being added
    by an earlier, unfinished addition: the blocks it has) and inputs unchanged. ``inputs(source, start,
    stop)``: the dataset's inputs now."""
    by_name = {r.name: r for r in raws}
    records = additions(read_meta(out))
    built = {m.name: m for m in arrays.modalities}
    stay = np.asarray(store.array(writer.group, "stay_id")[:])
    for m in writer.spec.modalities:
        if m.name in skip:
            continue
        source = str(records.get(m.name, {}).get("source", m.name))
        raw = by_name.get(source)
        if raw is None:
            raise AdditionError(
                f"{out} holds modality {m.name!r}, which the dataset as configured now does not give; --add-modality "
                "needs the options that made the cache plus the new modality (a manifest: its spec with the new "
                "modality added)"
            )
        if source == m.name and source in built and _modality_json(built[source]) != _modality_json(m):
            diff = modality_differences(m, built[source])
            raise AdditionError(
                f"{out}: the dataset now defines modality {m.name!r} with another {', '.join(diff)}; extract it "
                "again (without --add-modality) before adding to the cache"
            )
        if m.name not in writer.adding and not writer.done_blocks(m.name).all():
            raise AdditionError(
                f"{out}: modality {m.name!r} has blocks not written (its extraction did not finish); rerun the "
                "command that made the cache to finish it, then add"
            )
        rows = changed_rows(writer, m.name, raw.input, partial(inputs, source))
        if rows.size:
            raise AdditionError(
                f"{out}: the inputs of modality {m.name!r} changed since it was encoded ({rows.size} rows, first "
                f"stay_id {int(stay[rows[0]])}); rerun the extraction that made the cache to update it, then add"
            )


def merged_spec(
    stored: CacheSpec, new: dict[str, ModalitySpec], sources: dict[str, str], order: Sequence[str], options: dict
) -> CacheSpec:
    """``stored`` plus the modalities ``new`` (``sources``: the dataset modality each encodes; ``order``: the
    dataset's modality order) with the dataset's ``options`` as ``adapter_options``; see the module docstring
    for where each new modality goes. A source added leaves ``extra["absent_modalities"]``."""
    mods = list(stored.modalities)
    for name, m in new.items():
        if sources[name] != name or name not in order:
            mods.append(m)
            continue
        before = set(order[: list(order).index(name)])
        at = 0
        for i, have in enumerate(mods):
            if have.name in before:
                at = i + 1
        mods.insert(at, m)
    spec = CacheSpec.from_json(stored.to_json())
    spec.modalities = mods
    spec.adapter_options = dict(options)
    absent = {k: v for k, v in (spec.extra.get("absent_modalities") or {}).items() if k not in sources.values()}
    spec.extra.pop("absent_modalities", None)
    if absent:  # a modality whose source was absent when the cache was made is one no longer
        spec.extra["absent_modalities"] = absent
    return spec
