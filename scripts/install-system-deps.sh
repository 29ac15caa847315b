#!/usr/bin/env bash
# Install the Debian packages pacsinfra's tests talk to (libvirt, QEMU, DCMTK, Orthanc and its
# DICOMweb and PostgreSQL plugins, sshd, Go + govmomi for the vSphere simulator, nginx and Chromium for the web
# viewer). Idempotent: does nothing when all are present.
set -euo pipefail

PKGS=(
  pkg-config libvirt-dev libvirt-daemon libvirt-daemon-system qemu-system-x86 qemu-utils
  dcmtk orthanc openssh-server iproute2 genisoimage xorriso busybox-static graphviz
  golang-go golang-github-vmware-govmomi-dev dnsmasq-base
  postgresql pgbouncer systemd openssl
  orthanc-dicomweb orthanc-postgresql nginx-light chromium chromium-driver nodejs
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
echo "system packages: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; the tests run their own instances on their own ports.
for svc in orthanc postgresql pgbouncer libvirtd virtlogd ssh nginx; do
  $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
