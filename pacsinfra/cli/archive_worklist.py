"""``pacsinfra archive worklist ...``: add, list and cancel Modality Worklist items."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from pacsinfra.cli.archive_config import opened_index
from pacsinfra.errors import UsageError


@contextmanager
def _opened(config: Path | None, data: Path | None) -> Iterator[Any]:
    """The archive's worklist (the index of ``config``), closed afterwards."""
    from pacsinfra.pacs.archive.worklist import Worklist

    with opened_index(config, data) as (_, db):
        yield Worklist(db)


_CONFIG = click.option("--config", "config", type=click.Path(path_type=Path),
                       help="archive.yaml")
_DATA = click.option("--data", type=click.Path(path_type=Path),
                     help="data directory (quick form)")
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2})?)?$")


@click.group()
def worklist() -> None:
    """Modality Worklist items (also served as UPS-RS workitems over DICOMweb)."""


def _item(patient_id: str, patient_name: str, accession: str, study_uid: str | None,
          modality: str, station: str, date: str, time: str, description: str) -> Any:
    from pydicom.dataset import Dataset

    if not _DATE.match(date):
        raise UsageError(f"--date {date!r}: give the date as YYYYMMDD")
    if time and not _TIME.match(time):
        raise UsageError(f"--time {time!r}: give the time as HHMM or HHMMSS")
    if not re.fullmatch(r"[A-Z0-9_ ]{1,16}", modality):
        raise UsageError(f"--modality {modality!r}: a code such as CT, MR, US")
    if station and (len(station) > 16 or not station.isprintable()):
        raise UsageError(f"--station {station!r}: an AE title of at most 16 characters")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = accession
    if study_uid:
        ds.StudyInstanceUID = study_uid
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = time
    step.ScheduledProcedureStepDescription = description
    ds.ScheduledProcedureStepSequence = [step]
    return ds


@worklist.command()
@_CONFIG
@_DATA
@click.option("--patient-id", required=True)
@click.option("--patient-name", default="", help="DICOM form: Family^Given")
@click.option("--accession", default="", help="Accession Number")
@click.option("--study-uid", default=None, help="Study Instance UID (generated if not given)")
@click.option("--modality", required=True, help="CT, MR, US, ...")
@click.option("--station", default="", help="Scheduled Station AE Title")
@click.option("--date", "date", required=True, help="scheduled start date YYYYMMDD")
@click.option("--time", "time", default="", help="scheduled start time HHMM[SS]")
@click.option("--description", default="", help="Scheduled Procedure Step Description")
@click.option("--uid", default=None, help="the item's UID (generated if not given)")
def add(config: Path | None, data: Path | None, patient_id: str, patient_name: str,
        accession: str, study_uid: str | None, modality: str, station: str, date: str,
        time: str, description: str, uid: str | None) -> None:
    """Schedule a procedure step; prints the new item's UID."""
    from pacsinfra.pacs.archive.worklist import WorklistError

    ds = _item(patient_id, patient_name, accession, study_uid, modality, station, date,
               time, description)
    with _opened(config, data) as wl:
        try:
            click.echo(wl.add(ds, uid))
        except WorklistError as exc:
            raise UsageError(exc.reason) from None


@worklist.command("list")
@_CONFIG
@_DATA
@click.option("--state", "states", multiple=True,
              type=click.Choice(["SCHEDULED", "IN PROGRESS", "COMPLETED", "CANCELED"]),
              help="only items in this state (repeatable); default: all")
@click.option("--json", "as_json", is_flag=True, help="one DICOM JSON data set per item")
def list_(config: Path | None, data: Path | None, states: tuple[str, ...],
          as_json: bool) -> None:
    """Worklist items by scheduled start."""
    from pacsinfra.pacs.archive.worklist import STATES

    with _opened(config, data) as wl:
        items = wl.items(states or STATES)
    if as_json:
        click.echo(json.dumps([it.dataset.to_json_dict() for it in items]))
        return
    for it in items:
        ds = it.dataset
        step = ds.ScheduledProcedureStepSequence[0] if ds.get(
            "ScheduledProcedureStepSequence") else None
        when = (f"{step.get('ScheduledProcedureStepStartDate', '')} "
                f"{step.get('ScheduledProcedureStepStartTime', '')}" if step else "")
        click.echo(f"{it.uid}  {it.state:<11}  {when.strip():<15}  "
                   f"{step.get('Modality', '') if step else '':<3}  "
                   f"{ds.get('PatientID', '')}  {ds.get('PatientName', '')}  "
                   f"acc {ds.get('AccessionNumber', '')}")
    click.echo(f"{len(items)} item(s)")


@worklist.command()
@_CONFIG
@_DATA
@click.argument("uid")
def cancel(config: Path | None, data: Path | None, uid: str) -> None:
    """Cancel a SCHEDULED item. Exit 2 for an unknown UID or an item already under way."""
    from pacsinfra.pacs.archive.worklist import WorklistError
    from pacsinfra.pacs.dicom import valid_uid

    if not valid_uid(uid):
        raise UsageError(f"{uid!r} is not a valid DICOM UID")
    with _opened(config, data) as wl:
        try:
            warning = wl.cancel(uid)
        except WorklistError as exc:
            raise UsageError(exc.reason) from None
    click.echo(warning or f"{uid} cancelled")
