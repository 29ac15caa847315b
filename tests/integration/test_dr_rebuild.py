"""Disaster recovery end to end on the local provider.

Site A is applied and filled with studies, backed up while it runs, destroyed;
``pacsinfra dr rebuild --site dr`` builds site B from the same blueprint's overlay (and
without ``--site``, site A again onto its own blueprint),
restores the backup into B's archive before it starts, counts every study of the
backup by C-FIND, and runs verify through B's router. Real processes, free loopback
ports, everything under a temp PACSINFRA_LOCAL_ROOT.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, need_module
from test_archive_support import store_studies, study_counts

pytestmark = pytest.mark.integration

need_module("pynetdicom")



def blueprint(ports: dict[str, int]) -> str:
    return f"""\
apiVersion: pacsinfra/v1
kind: Site
metadata: {{name: drtest}}
provider: {{driver: local}}
storage:
  disk: {{tier: performance, encrypted: true}}
machines:
  pacs:
    cpu: {{count: 1}}
    memory: {{size: 1GiB}}
    disks: [{{name: data, size: 1GiB, storage: disk}}]
    services: [archive, router]
services:
  archive:
    kind: archive
    config:
      ae_title: ARCHIVE
      port: {ports["a_archive"]}
      dicomweb: {{enabled: false}}
      peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 127.0.0.1, port: {ports["a_recv"]}}}}}
  router:
    kind: router
    config:
      ae_title: ROUTER
      port: {ports["a_router"]}
      destinations: {{arch: {{ae_title: ARCHIVE, service: archive, port: {ports["a_archive"]}}}}}
      rules: [{{name: all, forward: [arch]}}]
sites:
  dr:
    metadata: {{name: drtest-b, description: the DR site}}
    services:
      archive:
        config:
          port: {ports["b_archive"]}
          peers: {{PXVERIFY: {{ae_title: PXVERIFY, host: 127.0.0.1, port: {ports["b_recv"]}}}}}
      router:
        config:
          port: {ports["b_router"]}
          destinations: {{arch: {{ae_title: ARCHIVE, service: archive, port: {ports["b_archive"]}}}}}
"""


def test_dr_rebuild_brings_every_study_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = {**os.environ, "PACSINFRA_LOCAL_ROOT": str(root)}
    ports = {k: free_port() for k in ("a_archive", "a_router", "a_recv", "b_archive",
                                      "b_router", "b_recv")}
    bp = tmp_path / "site.yaml"
    bp.write_text(blueprint(ports))

    def cli(*args: str, rc: int = 0) -> str:
        r = subprocess.run([sys.executable, "-m", "pacsinfra", *args], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == rc, f"pacsinfra {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert "Traceback" not in r.stderr
        return r.stdout + r.stderr

    try:
        cli("apply", str(bp), "--auto-approve")
        sent = store_studies(ports["a_archive"], studies=4, per_study=3)
        (config,) = root.glob("drtest/machines/*/services/archive/config.yaml")
        (tmp_path / "backups").mkdir()
        cli("backup", "--archive-config", str(config), "--to", str(tmp_path / "backups" / "b1"))
        cli("destroy", str(bp), "--auto-approve")

        out = cli("dr", "rebuild", str(bp), "--site", "dr", "--from", str(tmp_path / "backups"),
                  "--auto-approve")
        assert f"{len(sent)}/{len(sent)} studies of the backup found by C-FIND" in out, out
        assert "smoke test PASSED" in out, out
        assert set(sent) <= set(study_counts(ports["b_archive"]))

        # a second rebuild onto the existing site is refused, nothing touched
        again = cli("dr", "rebuild", str(bp), "--site", "dr", "--from",
                    str(tmp_path / "backups"), "--auto-approve", rc=2)
        assert "already exists" in again
        assert set(sent) <= set(study_counts(ports["b_archive"]))

        # the site itself, rebuilt onto its own blueprint: no overlay, no --site
        own = cli("dr", "rebuild", str(bp), "--from", str(tmp_path / "backups"),
                  "--auto-approve")
        assert f"{len(sent)}/{len(sent)} studies of the backup found by C-FIND" in own, own
        assert set(sent) <= set(study_counts(ports["a_archive"]))
    finally:
        cli("destroy", str(bp), "--auto-approve")
        cli("destroy", str(bp), "--site", "dr", "--auto-approve")


def test_dr_rebuild_refuses_what_it_cannot_restore(tmp_path: Path) -> None:
    env = {**os.environ, "PACSINFRA_LOCAL_ROOT": str(tmp_path / "root")}
    ports = {k: free_port() for k in ("a_archive", "a_router", "a_recv", "b_archive",
                                      "b_router", "b_recv")}
    bp = tmp_path / "site.yaml"
    bp.write_text(blueprint(ports))
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "pacsinfra", "dr", "rebuild", str(bp), "--site",
                        "dr", "--from", str(tmp_path / "empty"), "--auto-approve"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "no complete backup" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "root" / "drtest-b").exists()  # nothing built
