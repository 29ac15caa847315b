"""``python -m pacsinfra.verify smoke|load``: the verify tools from a shell or a CI job.

    python -m pacsinfra.verify smoke --entry ARCHIVE@10.0.0.5:11112 \\
        [--archive ARCH2@10.0.0.6:11112 ...] --receiver PXSMOKERCV@0.0.0.0:11199 \\
        [--orthanc-delete ORTHANC=http://10.0.0.5:8042] [--json]
    python -m pacsinfra.verify load --target ROUTER@10.0.0.4:11112 --profiles ct,mr \\
        --concurrency 8 (--studies 100 | --duration 60) [--scale 1.0] [--json]

Exit status: 0 passed, 1 failed (the table says which step), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from pacsinfra.pacs.config_common import Peer


class _BadArgs(Exception):
    pass


def parse_ae(text: str) -> Peer:
    """``AET@host:port`` → a Peer; raises _BadArgs with what is wrong."""
    aet, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not aet or not host or not port.isdigit():
        raise _BadArgs(f"{text!r}: expected AET@host:port")
    try:
        return Peer(ae_title=aet, host=host, port=int(port))
    except ValidationError as exc:
        raise _BadArgs(f"{text!r}: {exc.errors()[0]['msg']}") from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pacsinfra.verify")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("smoke", help="store, find, move back and compare a synthetic study")
    s.add_argument("--entry", required=True, help="AE to C-STORE to (archive or router)")
    s.add_argument("--archive", action="append", default=[], help="AE to check (repeatable)")
    s.add_argument("--receiver", default="PXSMOKERCV@127.0.0.1:0",
                   help="temporary C-MOVE destination AET@bind:port (known to the archives)")
    s.add_argument("--calling-ae", default="PXSMOKE")
    s.add_argument("--series", type=int, default=3)
    s.add_argument("--instances", type=int, default=4)
    s.add_argument("--wait", type=float, default=60.0, help="seconds to wait for arrival")
    s.add_argument("--orthanc-delete", action="append", default=[],
                   help="AET=http://host:port: delete the study there through Orthanc's REST API")
    s.add_argument("--json", action="store_true")
    ld = sub.add_parser("load", help="C-STORE load at a target concurrency")
    ld.add_argument("--target", required=True)
    ld.add_argument("--profiles", default="ct", help="comma-separated: ct, mr, cr, tomo")
    ld.add_argument("--concurrency", type=int, default=4)
    ld.add_argument("--studies", type=int)
    ld.add_argument("--duration", type=float)
    ld.add_argument("--scale", type=float, default=1.0)
    ld.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a verify command; see the module docstring for exit codes."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "smoke":
            from pacsinfra.verify.smoke import OrthancDeleter, StudyDeleter, run_smoke

            entry = parse_ae(args.entry)
            archives = [parse_ae(a) for a in args.archive] or [entry]
            rcv = parse_ae(args.receiver)
            deleters: dict[str, StudyDeleter] = {}
            for spec in args.orthanc_delete:
                aet, eq, url = spec.partition("=")
                if not eq or not url.startswith(("http://", "https://")):
                    raise _BadArgs(f"--orthanc-delete {spec!r}: expected AET=http://host:port")
                deleters[aet] = OrthancDeleter(url)
            if args.series < 1 or args.instances < 1:
                raise _BadArgs("--series and --instances must be at least 1")
            report = run_smoke(entry, archives, receiver_ae=rcv.ae_title, receiver_host=rcv.host,
                               receiver_port=rcv.port, calling_ae=args.calling_ae,
                               series=args.series, instances=args.instances,
                               wait_timeout=args.wait, deleters=deleters)
            print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
            return 0 if report.ok else 1
        from pacsinfra.verify.load import run_load

        target = parse_ae(args.target)
        if args.studies is None and args.duration is None:
            raise _BadArgs("give --studies N or --duration SECONDS")
        if args.concurrency < 1:
            raise _BadArgs("--concurrency must be at least 1")
        try:
            load = run_load(target, profiles=args.profiles.split(","),
                            concurrency=args.concurrency, studies=args.studies,
                            duration=args.duration, scale=args.scale)
        except ValueError as exc:
            raise _BadArgs(str(exc)) from exc
        print(json.dumps(load.to_dict(), indent=2) if args.json else load.table())
        return 0 if load.errors == 0 else 1
    except _BadArgs as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
