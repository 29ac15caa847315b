"""Rule language: every operator, boolean combinations, edits, and the routing semantics."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from pacsinfra.pacs.router.config import Condition, RouterConfig, Rule, TagEdit
from pacsinfra.pacs.router.rules import (
    RuleError,
    Subject,
    apply_edits,
    evaluate,
    resolve_tag,
    route,
    validate_rules,
)


def ds(**kw: object) -> Dataset:
    d = Dataset()
    d.Modality = "CT"
    d.StationName = "CTROOM1"
    d.InstitutionName = "North Clinic"
    d.BodyPartExamined = "CHEST"
    d.InstanceNumber = 12
    d.StudyDate = "20240115"
    d.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    d.AccessionNumber = "A100"
    block = d.private_block(0x0009, "SITE", create=True)
    block.add_new(0x01, "LO", "secret")
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def cond(**kw: object) -> Condition:
    return Condition.model_validate(kw)


@pytest.mark.parametrize(("c", "expected"), [
    ({"tag": "Modality", "equals": "CT"}, True),
    ({"tag": "Modality", "equals": "MR"}, False),
    ({"tag": "Modality", "in": ["MR", "CT"]}, True),
    ({"tag": "StationName", "wildcard": "CT*1"}, True),
    ({"tag": "StationName", "wildcard": "ct*"}, False),  # case-sensitive like DICOM matching
    ({"tag": "InstitutionName", "regex": "^North"}, True),
    ({"tag": "InstitutionName", "regex": "South"}, False),
    ({"tag": "InstanceNumber", "range": [10, 20]}, True),
    ({"tag": "InstanceNumber", "range": [13, None]}, False),
    ({"tag": "InstanceNumber", "equals": 12}, True),
    ({"tag": "StudyDate", "range": ["20240101", "20241231"]}, True),
    ({"tag": "StudyDate", "range": ["20250101", None]}, False),
    ({"tag": "ImageType", "equals": "AXIAL"}, True),  # any value of a multi-valued element
    ({"tag": "(0009,1001)", "equals": "secret"}, True),  # private tag by number
    ({"tag": "(0009,1001)", "present": True}, True),
    ({"tag": "PatientWeight", "present": False}, True),
    ({"tag": "PatientWeight", "equals": "70"}, False),
    ({"calling_ae": True, "equals": "CT1"}, True),
    ({"called_ae": True, "wildcard": "ROUT*"}, True),
    ({"all": [{"tag": "Modality", "equals": "CT"}, {"tag": "BodyPartExamined",
                                                    "equals": "HEAD"}]}, False),
    ({"any": [{"tag": "Modality", "equals": "MR"}, {"tag": "BodyPartExamined",
                                                    "equals": "CHEST"}]}, True),
    ({"not": {"tag": "Modality", "equals": "CT"}}, False),
    ({"all": [{"not": {"calling_ae": True, "equals": "X"}},
              {"any": [{"tag": "StationName", "regex": "ROOM\\d"}]}]}, True),
])
def test_conditions(c: dict, expected: bool) -> None:
    v = evaluate(cond(**c), Subject(ds(), "CT1", "ROUTER"))
    assert v.matched is expected, "\n".join(v.lines())


@pytest.mark.parametrize("bad", [
    {"tag": "Modality"},  # no operator
    {"tag": "Modality", "equals": "CT", "regex": "C"},  # two operators
    {"tag": "Modality", "calling_ae": True, "equals": "CT"},  # two subjects
    {"tag": "Modality", "regex": "("},  # invalid regex
    {"all": [], "tag": "Modality", "equals": "CT"},
    {"tag": "Modality", "equals": "CT", "exec": "rm -rf /"},  # unknown keys are errors
])
def test_malformed_conditions_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        cond(**bad)


def test_unknown_keyword_is_reported() -> None:
    with pytest.raises(RuleError):
        resolve_tag("NotAKeyword")
    rules = [Rule(name="r", match=cond(tag="NotAKeyword", equals="1"))]
    assert "NotAKeyword" in validate_rules(rules)[0]


def test_edits() -> None:
    d = ds()
    apply_edits(d, [
        TagEdit(op="prefix", tag="AccessionNumber", value="SITE1-"),
        TagEdit(op="set", tag="InstitutionName", value="Routed"),
        TagEdit(op="remove", tag="(0009,1001)"),
        TagEdit(op="copy", tag="StudyDescription", source="StationName"),
        TagEdit(op="prefix", tag="OtherPatientIDs", value="X"),  # absent: prefix of empty
    ])
    assert d.AccessionNumber == "SITE1-A100"
    assert d.InstitutionName == "Routed"
    assert (0x0009, 0x1001) not in d
    assert d.StudyDescription == "CTROOM1"
    assert d.OtherPatientIDs == "X"


def _cfg(rules: list[dict]) -> RouterConfig:
    return RouterConfig.model_validate({
        "destinations": {n: {"ae_title": n.upper(), "host": "127.0.0.1"} for n in "abc"},
        "groups": {"g": {"members": ["b", "c"]}},
        "rules": rules,
    })


def test_route_semantics() -> None:
    cfg = _cfg([
        {"name": "tag", "match": {"tag": "Modality", "equals": "CT"},
         "edits": [{"op": "prefix", "tag": "AccessionNumber", "value": "S-"}], "forward": ["a"]},
        {"name": "fan", "forward": ["a", "g"]},
        {"name": "stopper", "match": {"tag": "Modality", "equals": "CT"}, "stop": True},
        {"name": "never", "forward": ["c"]},
    ])
    dec = route(cfg.rules, Subject(ds(), "X", "ROUTER"))
    assert [(d.target, d.rule, len(d.edits)) for d in dec.deliveries] == [
        ("a", "tag", 1), ("g", "fan", 1)]  # "fan" to a with the same edits is a duplicate
    assert [t.evaluated for t in dec.trace] == [True, True, True, False]
    dec = route(cfg.rules, Subject(ds(Modality="MR"), "X", "ROUTER"))
    assert [d.target for d in dec.deliveries] == ["a", "g", "c"]
    assert all(not d.edits for d in dec.deliveries)


def test_drop_discards_everything() -> None:
    cfg = _cfg([{"name": "first", "forward": ["a"]},
                {"name": "dropper", "match": {"tag": "StationName", "wildcard": "CT*"},
                 "drop": True},
                {"name": "after", "forward": ["b"]}])
    dec = route(cfg.rules, Subject(ds(), "X", "ROUTER"))
    assert dec.deliveries == [] and dec.dropped_by == "dropper"
    assert [t.evaluated for t in dec.trace] == [True, True, False]


def test_config_references_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown 'nowhere'"):
        _cfg([{"name": "x", "forward": ["nowhere"]}])
    with pytest.raises(ValidationError, match="needs 'value'"):
        _cfg([{"name": "x", "edits": [{"op": "set", "tag": "Modality"}]}])
