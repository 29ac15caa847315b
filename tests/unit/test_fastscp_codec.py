"""The upper-layer codec (``fastscp.codec``) against pynetdicom's own encoders and decoders.

Every PDU this project encodes by hand is decoded by pynetdicom's PDU classes, and
every PDU pynetdicom encodes is decoded by ours, with the same fields. DIMSE command
sets are checked against pydicom's Implicit VR Little Endian reader and writer. The
association state machine is checked against the transitions PS3.8 allows.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import pdu as pn_pdu
from pynetdicom import pdu_primitives as pn_prim
from pynetdicom.dsutils import encode as pn_encode

from pacsinfra.pacs import compat
from pacsinfra.pacs.fastscp import codec
from pacsinfra.pacs.fastscp.state import AssociationState, IllegalTransition, Phase, Role

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"

uids = st.from_regex(r"\A[1-9][0-9]{0,5}(\.(0|[1-9][0-9]{0,5})){1,8}\Z", fullmatch=True)
pdvs = st.lists(st.tuples(st.integers(1, 255), st.integers(0, 3), st.binary(max_size=300)),
                min_size=1, max_size=8)


# -- P-DATA-TF ----------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(pdvs)
def test_p_data_ours_decoded_by_pynetdicom(items: list[tuple[int, int, bytes]]) -> None:
    raw = codec.p_data_tf(items)
    theirs = pn_pdu.P_DATA_TF()
    theirs.decode(raw)
    got = [(i.presentation_context_id, i.presentation_data_value)
           for i in theirs.presentation_data_value_items]
    assert got == [(ctx, bytes((control,)) + data) for ctx, control, data in items]


@settings(max_examples=60, deadline=None)
@given(pdvs)
def test_p_data_pynetdicoms_decoded_by_ours(items: list[tuple[int, int, bytes]]) -> None:
    prim = pn_prim.P_DATA()
    prim.presentation_data_value_list = [[ctx, bytes((control,)) + data]
                                         for ctx, control, data in items]
    theirs = pn_pdu.P_DATA_TF()
    theirs.from_primitive(prim)
    raw = bytes(theirs.encode())
    kind, length = codec.parse_header(raw)
    assert (kind, length) == (codec.P_DATA_TF, len(raw) - 6)
    assert [(c, k, bytes(d)) for c, k, d in codec.iter_pdvs(raw[6:])] == items
    # one-PDV PDUs: the same bytes both ways
    ctx, control, data = items[0]
    one = pn_prim.P_DATA()
    one.presentation_data_value_list = [[ctx, bytes((control,)) + data]]
    single = pn_pdu.P_DATA_TF()
    single.from_primitive(one)
    assert codec.p_data(ctx, control, data) == bytes(single.encode())


@pytest.mark.parametrize("body", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x01\x03",
                                  b"\x00\x00\x00\x09\x01\x03abc", b"\xff\xff\xff\xff\x01\x03"])
def test_malformed_pdv_items_are_codec_errors(body: bytes) -> None:
    with pytest.raises(codec.CodecError):
        list(codec.iter_pdvs(body))


# -- fixed-size PDUs ----------------------------------------------------------------------------

def test_release_pdus_match_pynetdicom() -> None:
    assert codec.release_rq() == bytes(pn_pdu.A_RELEASE_RQ().encode())
    assert codec.release_rp() == bytes(pn_pdu.A_RELEASE_RP().encode())


@pytest.mark.parametrize("reason", [0, 1, 2, 4, 5, 6])
def test_abort_both_ways(reason: int) -> None:
    prim = pn_prim.A_P_ABORT()
    prim.provider_reason = reason
    theirs = pn_pdu.A_ABORT_RQ()
    theirs.from_primitive(prim)
    assert codec.abort(codec.ABORT_PROVIDER, reason) == bytes(theirs.encode())
    decoded = pn_pdu.A_ABORT_RQ()
    decoded.decode(codec.abort(codec.ABORT_PROVIDER, reason))
    assert (decoded.source, decoded.reason_diagnostic) == (2, reason)
    assert codec.parse_abort(bytes(theirs.encode())[6:]) == (2, reason)


@pytest.mark.parametrize("rsd", [codec.RJ_CALLING_AE, codec.RJ_CALLED_AE, codec.RJ_LIMIT,
                                 codec.RJ_CONGESTION, codec.RJ_TOO_LARGE, codec.RJ_NO_REASON])
def test_associate_rj_both_ways(rsd: tuple[int, int, int]) -> None:
    prim = pn_prim.A_ASSOCIATE()
    prim.result, prim.result_source, prim.diagnostic = rsd
    theirs = pn_pdu.A_ASSOCIATE_RJ()
    theirs.from_primitive(prim)
    assert codec.associate_rj(*rsd) == bytes(theirs.encode())
    decoded = pn_pdu.A_ASSOCIATE_RJ()
    decoded.decode(codec.associate_rj(*rsd))
    assert (decoded.result, decoded.source, decoded.reason_diagnostic) == rsd
    assert codec.parse_associate_rj(bytes(theirs.encode())[6:]) == rsd


@pytest.mark.parametrize("kind", [codec.A_RELEASE_RQ, codec.A_RELEASE_RP, codec.A_ABORT,
                                  codec.A_ASSOCIATE_RJ])
def test_fixed_size_pdus_must_be_four_bytes(kind: int) -> None:
    codec.check_fixed_length(kind, 4)
    for bad in (0, 3, 5, 0xFFFFFFFF):
        with pytest.raises(codec.CodecError):
            codec.check_fixed_length(kind, bad)


# -- association PDUs (pynetdicom's classes, behind compat) -------------------------------------

def test_associate_rq_and_ac_round_trip_through_compat() -> None:
    rq = compat.AssociateRequest(
        calling="MODALITY", called="ARCHIVE", application_context="1.2.840.10008.3.1.1.1",
        contexts=(compat.ProposedContext(1, CT, (EXPLICIT, "1.2.840.10008.1.2")),
                  compat.ProposedContext(3, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))),
        max_pdu=16384, implementation_uid="1.2.3.4", implementation_version="TEST_1")
    raw = compat.encode_associate_rq(rq)
    theirs = pn_pdu.A_ASSOCIATE_RQ()
    theirs.decode(raw)
    prim = theirs.to_primitive()
    assert prim.calling_ae_title == "MODALITY" and prim.called_ae_title == "ARCHIVE"
    assert compat.decode_associate_rq(raw) == rq
    ac = compat.AssociateAccept(
        calling="MODALITY", called="ARCHIVE", application_context="1.2.840.10008.3.1.1.1",
        results=(compat.ContextResult(1, 0, EXPLICIT),
                 compat.ContextResult(3, 4, "1.2.840.10008.1.2")),
        max_pdu=262144)
    assert compat.decode_associate_ac(compat.encode_associate_ac(ac)) == ac
    assert compat.decode_associate_rq(raw[:-3]) is None  # truncated
    assert compat.decode_associate_rq(codec.release_rq()) is None


# -- DIMSE command sets -------------------------------------------------------------------------

def _read(raw: bytes) -> Dataset:
    return read_dataset(BytesIO(raw), True, True)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 0xFFFF), uids, uids, st.sampled_from([0x0000, 0x0110, 0xA700, 0xC000]))
def test_command_sets_ours_read_by_pydicom(msg_id: int, sop_class: str, sop_uid: str,
                                           status: int) -> None:
    rq = _read(codec.store_rq(msg_id, sop_class, sop_uid))
    assert (rq.CommandField, rq.MessageID, rq.AffectedSOPClassUID,
            rq.AffectedSOPInstanceUID) == (1, msg_id, sop_class, sop_uid)
    assert rq.CommandGroupLength == len(codec.store_rq(msg_id, sop_class, sop_uid)) - 12
    rsp = _read(codec.store_rsp(msg_id, sop_class, sop_uid, status))
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status,
            rsp.CommandDataSetType) == (0x8001, msg_id, status, 0x0101)
    echo = _read(codec.echo_rsp(msg_id, "1.2.840.10008.1.1", status))
    assert (echo.CommandField, echo.Status) == (0x8030, status)
    find = _read(codec.find_rsp(msg_id, sop_class, 0xFF00, with_dataset=True))
    assert (find.CommandField, find.Status, find.CommandDataSetType) == (0x8020, 0xFF00, 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 0xFFFF), uids, uids, st.integers(0, 2))
def test_command_sets_pydicoms_read_by_ours(msg_id: int, sop_class: str, sop_uid: str,
                                            priority: int) -> None:
    cmd = Dataset()
    cmd.CommandGroupLength = 0
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = 0x0001
    cmd.MessageID = msg_id
    cmd.Priority = priority
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_uid
    cmd.MoveOriginatorApplicationEntityTitle = "MOVER"
    got = codec.decode_command(pn_encode(cmd, True, True))
    assert got[codec.COMMAND_FIELD] == 1 and got[codec.MESSAGE_ID] == msg_id
    assert got[codec.AFFECTED_SOP_CLASS] == sop_class
    assert got[codec.AFFECTED_SOP_INSTANCE] == sop_uid
    assert got[codec.PRIORITY] == priority and got[codec.MOVE_ORIGINATOR_AET] == "MOVER"


@pytest.mark.parametrize("raw", [b"\x00\x00", b"\x02\x00\x00\x00\x04\x00\x00\x00abcd",
                                 b"\x00\x00\x00\x01\x03\x00\x00\x00abc",
                                 b"\x00\x00\x00\x01\xff\xff\xff\xff"])
def test_malformed_command_sets_are_bad_commands(raw: bytes) -> None:
    with pytest.raises(codec.BadCommand):
        codec.decode_command(raw)


# -- message assembly ---------------------------------------------------------------------------

def test_assembler_enforces_the_message_order() -> None:
    cmd = codec.store_rq(1, CT, "1.2.3")
    asm = codec.MessageAssembler(contexts={1})
    parts = list(asm.feed(codec.p_data_tf([(1, 1, cmd[:10]), (1, 3, cmd[10:])])[6:]))
    assert parts == [codec.Command(1, cmd)]
    with pytest.raises(codec.CodecError, match="no command announced"):
        list(asm.feed(codec.p_data(1, 2, b"data")[6:]))
    asm = codec.MessageAssembler(contexts={1})
    asm.expect_data(1)
    with pytest.raises(codec.CodecError, match="middle of a data set"):
        list(asm.feed(codec.p_data(1, 3, cmd)[6:]))
    with pytest.raises(codec.CodecError, match="not accepted"):
        list(codec.MessageAssembler(contexts={1}).feed(codec.p_data(3, 3, cmd)[6:]))
    with pytest.raises(codec.CodecError, match="longer than"):
        list(codec.MessageAssembler(max_command=100).feed(
            codec.p_data_tf([(1, 1, b"\x00" * 60), (1, 1, b"\x00" * 60)])[6:]))


# -- the association state machine --------------------------------------------------------------

def test_acceptor_phases() -> None:
    s = AssociationState(Role.ACCEPTOR)
    with pytest.raises(IllegalTransition):
        s.received(codec.P_DATA_TF)  # data before the association request
    assert s.received(codec.A_ASSOCIATE_RQ) is Phase.NEGOTIATING
    assert s.sent(codec.A_ASSOCIATE_AC) is Phase.ESTABLISHED and s.established
    assert s.received(codec.P_DATA_TF) is Phase.ESTABLISHED
    for kind in (codec.A_ASSOCIATE_RQ, codec.A_ASSOCIATE_AC, codec.A_RELEASE_RP):
        with pytest.raises(IllegalTransition) as err:
            s.received(kind)
        assert err.value.reason == codec.REASON_UNEXPECTED_PDU
    with pytest.raises(codec.UnrecognizedPdu):
        s.received(0x09)
    assert s.received(codec.A_RELEASE_RQ) is Phase.RELEASING
    assert s.sent(codec.A_RELEASE_RP) is Phase.CLOSED and s.over
    assert s.closed() is Phase.CLOSED  # a release stays a release


def test_requestor_phases_and_aborts() -> None:
    s = AssociationState(Role.REQUESTOR)
    s.sent(codec.A_ASSOCIATE_RQ)
    with pytest.raises(IllegalTransition):
        s.received(codec.P_DATA_TF)  # data before the accept
    s = AssociationState(Role.REQUESTOR)
    s.sent(codec.A_ASSOCIATE_RQ)
    assert s.received(codec.A_ASSOCIATE_AC) is Phase.ESTABLISHED
    s.sent(codec.A_RELEASE_RQ)
    assert s.received(codec.P_DATA_TF) is Phase.RELEASING  # in flight before our request
    assert s.received(codec.A_RELEASE_RP) is Phase.CLOSED
    s = AssociationState(Role.REQUESTOR)
    s.sent(codec.A_ASSOCIATE_RQ)
    assert s.received(codec.A_ASSOCIATE_RJ) is Phase.CLOSED
    s = AssociationState(Role.ACCEPTOR)
    s.received(codec.A_ASSOCIATE_RQ)
    s.sent(codec.A_ASSOCIATE_AC)
    assert s.received(codec.A_ABORT) is Phase.ABORTED and not s.may_send(codec.A_ABORT)
    with pytest.raises(RuntimeError):
        s.sent(codec.P_DATA_TF)  # nothing is sent on an aborted association
    s = AssociationState(Role.ACCEPTOR)
    s.received(codec.A_ASSOCIATE_RQ)
    s.sent(codec.A_ASSOCIATE_AC)
    assert s.closed() is Phase.ABORTED  # the connection dropped while established
