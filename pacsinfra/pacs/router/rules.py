"""Rule evaluation: which rules match an instance, why, and what to do with it.

Rules are data (:class:`~pacsinfra.pacs.router.config.Rule`), evaluated in order
against the *received* dataset and the association's AE titles. Semantics:

- a rule with no ``match`` matches everything;
- ``edits`` of every matched rule accumulate, in rule order; a rule's ``forward``
  targets receive the instance with the edits accumulated up to and including
  that rule (matching always looks at the instance as received);
- ``drop`` discards the instance entirely (no forward at all) and ends evaluation;
- ``stop`` ends evaluation after the rule; otherwise evaluation continues.

Nothing here executes code from the configuration: operators are a fixed set.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from pacsinfra.pacs.router.config import Condition, Rule, TagEdit

_HEX_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")


class RuleError(ValueError):
    """A rule names a tag that does not exist or an edit that cannot be applied."""


@lru_cache(maxsize=1024)
def resolve_tag(name: str) -> BaseTag:
    """A keyword (``Modality``) or a hex tag (``(0009,0010)``, ``00090010``) as a pydicom tag."""
    m = _HEX_TAG.match(name.strip())
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    tag = tag_for_keyword(name.strip())
    if tag is None:
        raise RuleError(f"unknown DICOM keyword {name!r} (use a keyword or (gggg,eeee))")
    return Tag(tag)


def _values(ds: Dataset, tag: BaseTag) -> list[str] | None:
    """The element's values as strings (multi-valued: one per value); None when absent."""
    if tag not in ds:
        return None
    value = ds[tag].value
    if value is None or value == "":
        return []
    if isinstance(value, bytes):
        return [value.decode("latin-1").rstrip("\x00 ")]
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


def _num(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _in_range(value: str, low: Any, high: Any) -> bool:
    nv, nl, nh = _num(value), _num(low), _num(high)
    numeric = nv is not None and (low is None or nl is not None) and (high is None or nh is not None)
    if numeric:
        assert nv is not None
        return (nl is None or nv >= nl) and (nh is None or nv <= nh)
    return (low is None or value >= str(low)) and (high is None or value <= str(high))


def _equal(value: str, expected: Any) -> bool:
    if isinstance(expected, bool):
        return value.lower() in (("true", "1", "yes") if expected else ("false", "0", "no"))
    nv, ne = _num(value), _num(expected)
    if isinstance(expected, int | float) and nv is not None and ne is not None:
        return nv == ne
    return value == str(expected)


#: tag -> its values as :func:`_values` gives them (None: absent); what the receive path
#: reads straight from the bytes for the tags the rules name (see :func:`rule_tags`)
TagValues = Mapping[int, "list[str] | None"]


@dataclass
class Subject:
    """What a condition looks at: the dataset (or the values of the tags the rules
    name) and the association's AE titles."""

    ds: Dataset | TagValues
    calling_ae: str = ""
    called_ae: str = ""

    def values(self, tag: BaseTag) -> list[str] | None:
        """The element's values as strings (one per value); None when absent."""
        if isinstance(self.ds, Dataset):
            return _values(self.ds, tag)
        return self.ds[int(tag)]  # a KeyError is a bug: the tag was not read


def rule_tags(rules: Sequence[Rule]) -> frozenset[int]:
    """Every tag a condition of ``rules`` looks at (what a :class:`Subject` needs)."""
    tags: set[int] = set()

    def walk(c: Condition | None) -> None:
        if c is None:
            return
        for kid in (c.all or []) + (c.any or []):
            walk(kid)
        walk(c.not_)
        if c.tag is not None:
            tags.add(int(resolve_tag(c.tag)))

    for r in rules:
        walk(r.match)
    return frozenset(tags)


@dataclass
class Verdict:
    """Outcome of one condition, with the reason (and the sub-verdicts of a combination)."""

    matched: bool
    reason: str
    children: list[Verdict] = field(default_factory=list)

    def lines(self, indent: int = 0) -> list[str]:
        """Indented human-readable explanation."""
        mark = "yes" if self.matched else "no "
        out = [f"{'  ' * indent}[{mark}] {self.reason}"]
        for c in self.children:
            out.extend(c.lines(indent + 1))
        return out


def evaluate(cond: Condition | None, subj: Subject) -> Verdict:
    """Evaluate ``cond`` against ``subj``; the verdict explains itself."""
    if cond is None:
        return Verdict(True, "no match clause: matches every instance")
    if cond.all is not None:
        kids = [evaluate(c, subj) for c in cond.all]
        return Verdict(all(k.matched for k in kids), f"all of {len(kids)}", kids)
    if cond.any is not None:
        kids = [evaluate(c, subj) for c in cond.any]
        return Verdict(any(k.matched for k in kids), f"any of {len(kids)}", kids)
    if cond.not_ is not None:
        kid = evaluate(cond.not_, subj)
        return Verdict(not kid.matched, "not", [kid])
    if cond.calling_ae or cond.called_ae:
        label = "calling AE" if cond.calling_ae else "called AE"
        values: list[str] | None = [subj.calling_ae if cond.calling_ae else subj.called_ae]
    else:
        assert cond.tag is not None
        label = cond.tag
        values = subj.values(resolve_tag(cond.tag))
    return _leaf(cond, label, values)


def _leaf(cond: Condition, label: str, values: list[str] | None) -> Verdict:
    shown = "absent" if values is None else ("\\".join(values) if values else "empty")
    if cond.present is not None:
        ok = (values is not None) == cond.present
        want = "present" if cond.present else "absent"
        return Verdict(ok, f"{label} is {want} (it is {'present' if values is not None else 'absent'})")
    vals = values or []
    if cond.equals is not None:
        ok = any(_equal(v, cond.equals) for v in vals)
        what = f"equals {cond.equals!r}"
    elif cond.in_ is not None:
        ok = any(_equal(v, e) for v in vals for e in cond.in_)
        what = f"in {cond.in_!r}"
    elif cond.wildcard is not None:
        ok = any(fnmatch.fnmatchcase(v, cond.wildcard) for v in vals)
        what = f"matches wildcard {cond.wildcard!r}"
    elif cond.regex is not None:
        pattern = _regex(cond.regex)
        ok = any(pattern.search(v) is not None for v in vals)
        what = f"matches regex {cond.regex!r}"
    else:
        assert cond.range is not None
        low, high = cond.range
        ok = any(_in_range(v, low, high) for v in vals)
        what = f"in range [{low}, {high}]"
    return Verdict(ok, f"{label} {what} (value: {shown})")


@lru_cache(maxsize=256)
def _regex(text: str) -> re.Pattern[str]:
    return re.compile(text)


# -- edits --------------------------------------------------------------------------------


def apply_edits(ds: Dataset, edits: Sequence[TagEdit]) -> None:
    """Apply tag morphing steps to ``ds`` in place (set / remove / copy / prefix)."""
    from pydicom.datadict import dictionary_VR

    for e in edits:
        tag = resolve_tag(e.tag)
        if e.op == "remove":
            if tag in ds:
                del ds[tag]
            continue
        if e.op == "copy":
            assert e.source is not None
            src = resolve_tag(e.source)
            if src not in ds:
                continue  # nothing to copy: the destination tag stays as it is
            value, vr = ds[src].value, ds[src].VR
        elif e.op == "prefix":
            old = ds[tag].value if tag in ds else ""
            value, vr = f"{e.value}{'' if old is None else old}", None
        else:
            value, vr = e.value, None
        if tag in ds:
            ds[tag].value = value
            continue
        if vr is None:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "LO"  # a private tag without a dictionary entry
        ds.add_new(tag, vr, value)


# -- routing ------------------------------------------------------------------------------


@dataclass
class RuleTrace:
    """One rule's verdict, for ``router explain``."""

    rule: Rule
    verdict: Verdict
    evaluated: bool = True


@dataclass
class Delivery:
    """Send the instance (with ``edits`` applied) to ``target`` (destination or group)."""

    target: str
    edits: tuple[TagEdit, ...]
    rule: str
    per_study: bool  # held until its study (or series) is complete


@dataclass
class Decision:
    """What to do with one instance."""

    deliveries: list[Delivery]
    dropped_by: str | None
    trace: list[RuleTrace]


def route(rules: Sequence[Rule], subj: Subject) -> Decision:
    """Run the rules in order (see module docstring) and collect deliveries."""
    deliveries: list[Delivery] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    edits: list[TagEdit] = []
    trace: list[RuleTrace] = []
    stopped = False
    for rule in rules:
        if stopped:
            trace.append(RuleTrace(rule, Verdict(False, "not evaluated: an earlier rule stopped"),
                                   evaluated=False))
            continue
        verdict = evaluate(rule.match, subj)
        trace.append(RuleTrace(rule, verdict))
        if not verdict.matched:
            continue
        if rule.drop:
            return Decision([], rule.name, trace + [
                RuleTrace(r, Verdict(False, "not evaluated: instance dropped"), evaluated=False)
                for r in rules[len(trace):]])
        edits.extend(rule.edits)
        frozen = tuple(edits)
        key_edits = tuple(e.model_dump_json() for e in frozen)
        for target in rule.forward:
            if (target, key_edits) in seen:
                continue
            seen.add((target, key_edits))
            deliveries.append(Delivery(target, frozen, rule.name,
                                       rule.per_study or rule.complete is not None))
        stopped = rule.stop
    return Decision(deliveries, None, trace)


def validate_rules(rules: Sequence[Rule]) -> list[str]:
    """Problems a config's rules have that the schema cannot see (unknown tag keywords)."""
    problems: list[str] = []

    def walk(c: Condition | None, where: str) -> None:
        if c is None:
            return
        for kid in (c.all or []) + (c.any or []):
            walk(kid, where)
        walk(c.not_, where)
        if c.tag is not None:
            try:
                resolve_tag(c.tag)
            except RuleError as exc:
                problems.append(f"rule {where!r}: {exc}")

    for r in rules:
        walk(r.match, r.name)
        for e in r.edits:
            for name in (e.tag, e.source):
                if name:
                    try:
                        resolve_tag(name)
                    except RuleError as exc:
                        problems.append(f"rule {r.name!r}: {exc}")
    return problems
