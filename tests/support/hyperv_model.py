"""An in-memory Hyper-V host that answers pacsinfra's scripts by their JSON contracts.

It does not interpret PowerShell. It reads a script's header (``# pacsinfra-script: new-vm
v1``) and its parameters document (the base64 literal), then does what that script's
contract says to a model of the host: VMs with processors, memory, network adapters and
VLANs, GPU partition adapters and SCSI-attached VHDX files; virtual switches; directories.
It fails the way the cmdlets would (a duplicate VM name, too little memory to start, a
missing switch or image, a processor count changed on a running VM) and reports each
failure as the script's catch block would: ``{"error": {type, message, cmdlet, line,
category}}`` with exit code 1, where ``line`` is the line of the failing cmdlet in the
script text it was sent.

What it checks is only what a test pins: the scripts themselves are verified by golden
tests here and by scripts/check-hyperv-contracts.py against a real host.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from pacsinfra.drivers.hyperv.scripts import SCRIPTS, parse_script

HV_EXC = "Microsoft.HyperV.PowerShell.VirtualizationException"
SECURE_BOOT_TEMPLATES = {"MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM"}


class ModelError(Exception):
    """A cmdlet failure, reported like the scripts' catch block does."""

    def __init__(self, cmdlet: str, message: str, category: str, *, type_: str = HV_EXC,
                 anchor: str | None = None) -> None:
        super().__init__(message)
        self.cmdlet, self.message, self.category, self.type = cmdlet, message, category, type_
        self.anchor = anchor or cmdlet


@dataclass
class Vhd:
    path: str
    size_mib: int
    type: str  # Dynamic | Fixed | Differencing
    parent: str | None = None


@dataclass
class Adapter:
    name: str
    switch: str
    mac: str
    dynamic_mac: bool = True
    vlan: int | None = None
    addresses: list[str] = field(default_factory=list)


@dataclass
class Vm:
    id: str
    name: str
    path: str
    notes: str = ""
    state: str = "Off"
    generation: int = 2
    processor: dict[str, int] = field(default_factory=lambda: {"count": 1, "reserve": 0, "maximum": 100, "weight": 100})
    memory: dict[str, Any] = field(default_factory=dict)
    drives: list[dict[str, Any]] = field(default_factory=list)  # {"path", "maximum_iops"}
    adapters: list[Adapter] = field(default_factory=list)
    gpus: list[str | None] = field(default_factory=list)
    secure_boot: dict[str, Any] = field(default_factory=lambda: {"enabled": True, "template": "MicrosoftWindows"})
    starts: int = 0  # how many times Start-VM ran on it (a restart shows as one more)


@dataclass
class Switch:
    id: str
    name: str
    type: str
    adapter: str | None = None
    notes: str = ""


def _key(path: str) -> str:
    return path.replace("/", "\\").rstrip("\\").lower()


def _parent(path: str) -> str:
    return path.replace("/", "\\").rstrip("\\").rpartition("\\")[0]


class HypervHost:
    """The model. Tests change it behind the driver's back (drift) and inject failures."""

    def __init__(self, *, mhz: int = 2600, logical_processors: int = 32, memory_mib: int = 65536,
                 drives: tuple[str, ...] = ("C:", "D:"), net_adapters: tuple[str, ...] = ("Ethernet 2",),
                 gpus: tuple[str, ...] = ("\\\\?\\PCI#VEN_10DE&DEV_2235#GPU0",)) -> None:
        self.mhz, self.logical_processors, self.memory_mib = mhz, logical_processors, memory_mib
        self.drives = {d.lower() for d in drives}
        self.net_adapters = set(net_adapters)
        self.host_gpus = list(gpus)
        self.vms: dict[str, Vm] = {}  # id -> VM
        self.switches: dict[str, Switch] = {}  # lower name -> switch
        self.dirs: dict[str, str] = {}  # lower path -> path
        self.markers: dict[str, str] = {}  # lower dir path -> marker text
        self.files: dict[str, Vhd] = {}  # lower path -> VHDX
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_next: dict[str, ModelError] = {}  # script name -> error raised by its next run
        self._macs = itertools.count(0x0A0000)
        self.lock = threading.Lock()

    # -- helpers for tests ---------------------------------------------------------
    def add_image(self, path: str, size_mib: int) -> None:
        """A golden image VHDX on the host (and its directory)."""
        self.mkdir(_parent(path))
        self.files[_key(path)] = Vhd(path=path, size_mib=size_mib, type="Dynamic")

    def mkdir(self, path: str) -> None:
        path = path.rstrip("\\")
        parts = path.split("\\")
        if parts[0].lower() not in self.drives:
            raise ModelError("New-Item", f"Cannot find drive. A drive with the name '{parts[0]}' does not exist.",
                             "ObjectNotFound", type_="System.Management.Automation.DriveNotFoundException")
        for i in range(2, len(parts) + 1):
            sub = "\\".join(parts[:i])
            self.dirs.setdefault(_key(sub), sub)

    def vm(self, name: str) -> Vm:
        """The one VM called ``name`` (tests only)."""
        found = [v for v in self.vms.values() if v.name == name]
        assert len(found) == 1, f"{len(found)} VMs named {name}"
        return found[0]

    def vhd_files(self) -> list[str]:
        return sorted(v.path for v in self.files.values())

    # -- the endpoint's entry point ---------------------------------------------------
    def run(self, script_text: str) -> tuple[int, bytes, bytes]:
        """Run one rendered script: (exit code, stdout, stderr)."""
        try:
            name, version, params = parse_script(script_text)
        except ValueError as exc:
            return 1, b"", f"not a pacsinfra script: {exc}".encode()
        if SCRIPTS.get(name) != version:
            return 1, b"", f"unknown script {name} v{version}".encode()
        with self.lock:
            self.calls.append((name, params))
            try:
                injected = self.fail_next.pop(name, None)
                if injected is not None:
                    raise injected
                result = getattr(self, "_" + name.replace("-", "_"))(params)
            except ModelError as err:
                # a script stops at its first error: what it did before that stays done
                doc = {"error": {"type": err.type, "message": err.message, "cmdlet": err.cmdlet,
                                 "line": _line_of(script_text, err.anchor), "category": err.category}}
                return 1, (json.dumps(doc) + "\r\n").encode(), b""
        return 0, (json.dumps(result, separators=(",", ":")) + "\r\n").encode("utf-8"), b""

    # -- facts ------------------------------------------------------------------------
    def _vm_facts(self, vm: Vm) -> dict[str, Any]:
        disks = []
        for d in vm.drives:
            vhd = self.files[_key(d["path"])]
            disks.append({"path": d["path"], "size_mib": vhd.size_mib, "type": vhd.type,
                          "parent": vhd.parent, "maximum_iops": d["maximum_iops"]})
        return {
            "id": vm.id, "name": vm.name, "state": vm.state, "generation": vm.generation, "notes": vm.notes,
            "processor": dict(vm.processor), "memory": dict(vm.memory), "disks": disks,
            "adapters": [{"name": a.name, "switch": a.switch, "mac": a.mac, "dynamic_mac": a.dynamic_mac,
                          "vlan": a.vlan, "addresses": list(a.addresses)} for a in vm.adapters],
            "gpus": [{"instance_path": g} for g in vm.gpus],
            "secure_boot": dict(vm.secure_boot),
        }

    def _switch_facts(self, sw: Switch) -> dict[str, Any]:
        return {"id": sw.id, "name": sw.name, "type": sw.type, "adapter": sw.adapter, "notes": sw.notes}

    # -- host ---------------------------------------------------------------------------
    def _host_info(self, p: dict[str, Any]) -> dict[str, Any]:
        used = sum(v.memory["startup_mib"] for v in self.vms.values() if v.state == "Running")
        return {"host": "HV-MODEL", "mhz": self.mhz, "logical_processors": self.logical_processors,
                "memory_mib": self.memory_mib, "memory_free_mib": self.memory_mib - used}

    # -- VMs ------------------------------------------------------------------------------
    def _get_vm(self, p: dict[str, Any]) -> dict[str, Any]:
        if p["name"]:
            vms = [v for v in self.vms.values() if v.name == p["name"]]
        else:
            vms = [v for v in self.vms.values() if v.notes.startswith(p["mark_prefix"])]
        return {"vms": [self._vm_facts(v) for v in vms]}

    def _by_id(self, vm_id: str, cmdlet: str = "Get-VM") -> Vm:
        vm = self.vms.get(str(vm_id))
        if vm is None:
            raise ModelError(cmdlet, f"Hyper-V was unable to find a virtual machine with id '{vm_id}'.",
                             "ObjectNotFound")
        return vm

    def _new_vm(self, p: dict[str, Any]) -> dict[str, Any]:
        if any(v.name == p["name"] for v in self.vms.values()):
            raise ModelError("Write-Error", f"a virtual machine named '{p['name']}' already exists",
                             "ResourceExists", type_="Microsoft.PowerShell.Commands.WriteErrorException",
                             anchor="Write-Error -Category ResourceExists")
        mem = p["memory"]
        if mem["startup_mib"] < 32 or mem["startup_mib"] % 2:
            raise ModelError("New-VM", "Invalid startup memory: it must be a multiple of 2 MB and at least 32 MB.",
                             "InvalidArgument")
        vm = Vm(id=str(uuid.uuid4()), name=p["name"], path=p["path"], generation=int(p["generation"]),
                memory={"dynamic": False, "startup_mib": mem["startup_mib"], "minimum_mib": mem["startup_mib"],
                        "maximum_mib": mem["startup_mib"]})
        self.vms[vm.id] = vm
        vm.notes = p["notes"]
        self._set_processor(vm, p["processor"])
        self._set_memory(vm, p["memory"])
        sb = p["secure_boot"]
        if sb["enabled"] and sb["template"] not in SECURE_BOOT_TEMPLATES:
            raise ModelError("Set-VMFirmware", f"Unknown Secure Boot template '{sb['template']}'.", "InvalidArgument")
        vm.secure_boot = {"enabled": bool(sb["enabled"]), "template": sb["template"] if sb["enabled"] else "MicrosoftWindows"}
        for nic in p["adapters"]:
            self._set_adapter(vm, nic)
        for disk in p["disks"]:
            self._add_disk(vm, disk)
        for gpu in p["gpus"]:
            self._add_gpu(vm, gpu)
        if p["start"]:
            self._start(vm)
        return self._vm_facts(vm)

    def _set_processor(self, vm: Vm, proc: dict[str, Any]) -> None:
        if vm.state == "Running" and proc["count"] != vm.processor["count"]:
            raise ModelError("Set-VMProcessor", "Cannot change the processor count of a running virtual machine.",
                             "InvalidOperation", anchor="Set-VMProcessor -VM")
        if not 1 <= proc["count"] <= self.logical_processors:
            raise ModelError("Set-VMProcessor", f"The virtual machine cannot have {proc['count']} processors; "
                             f"the host has {self.logical_processors} logical processors.", "InvalidArgument",
                             anchor="Set-VMProcessor -VM")
        if not (0 <= proc["reserve"] <= 100 and 0 <= proc["maximum"] <= 100 and 1 <= proc["weight"] <= 10000):
            raise ModelError("Set-VMProcessor", "Reserve/Maximum must be 0..100 and RelativeWeight 1..10000.",
                             "InvalidArgument", anchor="Set-VMProcessor -VM")
        vm.processor = {k: int(proc[k]) for k in ("count", "reserve", "maximum", "weight")}

    def _set_memory(self, vm: Vm, mem: dict[str, Any]) -> None:
        new = {"dynamic": bool(mem["dynamic"]), "startup_mib": int(mem["startup_mib"]),
               "minimum_mib": int(mem["minimum_mib"] if mem["dynamic"] else mem["startup_mib"]),
               "maximum_mib": int(mem["maximum_mib"] if mem["dynamic"] else mem["startup_mib"])}
        anchor = "Set-VMMemory -VM $Vm -DynamicMemoryEnabled $" + ("true" if mem["dynamic"] else "false")
        if vm.state == "Running" and (new["dynamic"] != vm.memory["dynamic"] or new["startup_mib"] != vm.memory["startup_mib"]):
            raise ModelError("Set-VMMemory", "Cannot change the startup memory or enable dynamic memory "
                             "of a running virtual machine.", "InvalidOperation", anchor=anchor)
        if new["dynamic"] and not new["minimum_mib"] <= new["startup_mib"] <= new["maximum_mib"]:
            raise ModelError("Set-VMMemory", "Minimum <= Startup <= Maximum does not hold.", "InvalidArgument",
                             anchor=anchor)
        vm.memory = new

    def _set_adapter(self, vm: Vm, nic: dict[str, Any]) -> None:
        if _key(nic["switch"]) not in self.switches:
            raise ModelError("Add-VMNetworkAdapter", f"Hyper-V was unable to find a virtual switch with name "
                             f"\"{nic['switch']}\".", "ObjectNotFound", anchor="Add-VMNetworkAdapter -VM")
        a = next((x for x in vm.adapters if x.name == nic["name"]), None)
        if a is None:
            a = Adapter(name=nic["name"], switch=nic["switch"], mac=f"00155D{next(self._macs):06X}")
            vm.adapters.append(a)
        a.switch = nic["switch"]
        if nic["mac"]:
            a.mac, a.dynamic_mac = nic["mac"], False
        vlan = nic["vlan"]
        if vlan is not None and not 1 <= int(vlan) <= 4094:
            raise ModelError("Set-VMNetworkAdapterVlan", f"Invalid VLAN id {vlan}.", "InvalidArgument",
                             anchor="Set-VMNetworkAdapterVlan -VMNetworkAdapter $a -Access")
        a.vlan = None if vlan is None else int(vlan)

    def _add_disk(self, vm: Vm, d: dict[str, Any]) -> None:
        path = d["path"]
        if _key(_parent(path)) not in self.dirs:
            cmd = "Copy-Item" if d["source"] and d["mode"] != "differencing" else "New-VHD"
            raise ModelError(cmd, f"Could not find a part of the path '{path}'.", "ObjectNotFound",
                             type_="System.IO.DirectoryNotFoundException")
        if any(_key(x["path"]) == _key(path) for v in self.vms.values() for x in v.drives):
            raise ModelError("Remove-Item", f"The process cannot access the file '{path}' because it is being "
                             "used by another process.", "WriteError", type_="System.IO.IOException")
        if d["source"]:
            src = self.files.get(_key(d["source"]))
            if src is None:
                cmd = "New-VHD" if d["mode"] == "differencing" else "Copy-Item"
                raise ModelError(cmd, f"Cannot find path '{d['source']}' because it does not exist.",
                                 "ObjectNotFound", type_="System.Management.Automation.ItemNotFoundException",
                                 anchor=cmd + (" -Path $Disk.path -ParentPath" if cmd == "New-VHD" else " -LiteralPath $Disk.source"))
            if d["mode"] == "differencing":
                vhd = Vhd(path=path, size_mib=src.size_mib, type="Differencing", parent=src.path)
            else:
                vhd = Vhd(path=path, size_mib=src.size_mib, type=src.type)
        else:
            vhd = Vhd(path=path, size_mib=int(d["size_mib"]), type=d["type"])
        vhd.size_mib = max(vhd.size_mib, int(d["size_mib"]))
        self.files[_key(path)] = vhd
        vm.drives.append({"path": path, "maximum_iops": int(d["maximum_iops"])})

    def _add_gpu(self, vm: Vm, gpu: dict[str, Any]) -> None:
        inst = gpu["instance_path"]
        if vm.state == "Running":
            raise ModelError("Add-VMGpuPartitionAdapter", "The virtual machine must be off.", "InvalidOperation")
        if (inst and inst not in self.host_gpus) or not self.host_gpus:
            raise ModelError("Add-VMGpuPartitionAdapter", "No partitionable GPU matches.", "ObjectNotFound")
        vm.gpus.append(inst)

    def _start(self, vm: Vm) -> None:
        used = sum(v.memory["startup_mib"] for v in self.vms.values() if v.state == "Running")
        if used + vm.memory["startup_mib"] > self.memory_mib:
            raise ModelError("Start-VM", f"'{vm.name}' could not initialize: not enough memory in the system "
                             "to start the virtual machine.", "ResourceUnavailable", anchor="Start-VM -VM")
        vm.state = "Running"
        vm.starts += 1

    def _set_vm(self, p: dict[str, Any]) -> dict[str, Any]:
        vm = self._by_id(p["id"])
        if p["stop_first"] and vm.state == "Running":
            vm.state = "Off"
        if p["notes"] is not None:
            vm.notes = p["notes"]
        if p["processor"] is not None:
            self._set_processor(vm, p["processor"])
        if p["memory"] is not None:
            self._set_memory(vm, p["memory"])
        if p["adapters"] is not None:
            wanted = {n["name"] for n in p["adapters"]}
            vm.adapters = [a for a in vm.adapters if a.name in wanted]
            for nic in p["adapters"]:
                self._set_adapter(vm, nic)
        if p["disks"] is not None:
            wanted_paths = {_key(d["path"]) for d in p["disks"]}
            for drive in list(vm.drives):
                if _key(drive["path"]) not in wanted_paths:
                    vm.drives.remove(drive)
                    self.files.pop(_key(drive["path"]), None)
            for d in p["disks"]:
                drive = next((x for x in vm.drives if _key(x["path"]) == _key(d["path"])), None)
                if drive is None:
                    self._add_disk(vm, d)
                    continue
                vhd = self.files[_key(d["path"])]
                vhd.size_mib = max(vhd.size_mib, int(d["size_mib"]))
                drive["maximum_iops"] = int(d["maximum_iops"])
        if p["gpus"] is not None:
            if vm.state == "Running" and len(p["gpus"]) != len(vm.gpus):
                raise ModelError("Remove-VMGpuPartitionAdapter", "The virtual machine must be off.",
                                 "InvalidOperation")
            vm.gpus = []
            for gpu in p["gpus"]:
                self._add_gpu(vm, gpu)
        if p["start"] is True and vm.state != "Running":
            self._start(vm)
        if p["start"] is False and vm.state == "Running":
            vm.state = "Off"
        return self._vm_facts(vm)

    def _remove_vm(self, p: dict[str, Any]) -> dict[str, Any]:
        vm = self.vms.get(str(p["id"])) if p["id"] else None
        if vm is not None:
            vm.state = "Off"
            for drive in list(vm.drives):
                vm.drives.remove(drive)
                self.files.pop(_key(drive["path"]), None)
        for path in p["paths"]:
            if any(_key(x["path"]) == _key(path) for v in self.vms.values() for x in v.drives):
                raise ModelError("Remove-Item", f"The process cannot access the file '{path}' because it is "
                                 "being used by another process.", "WriteError", type_="System.IO.IOException",
                                 anchor="Remove-Item -LiteralPath $path -Force")
            self.files.pop(_key(path), None)
        if vm is not None:
            del self.vms[vm.id]
        return {"removed": vm is not None}

    # -- switches --------------------------------------------------------------------------
    def _get_switch(self, p: dict[str, Any]) -> dict[str, Any]:
        if p["name"]:
            sws = [s for s in self.switches.values() if s.name == p["name"]]
        else:
            sws = [s for s in self.switches.values() if s.notes.startswith(p["mark_prefix"])]
        return {"switches": [self._switch_facts(s) for s in sws]}

    def _new_switch(self, p: dict[str, Any]) -> dict[str, Any]:
        if _key(p["name"]) in self.switches:
            raise ModelError("New-VMSwitch", f"A virtual switch named '{p['name']}' already exists.", "ResourceExists")
        if p["type"] == "external":
            if p["adapter"] not in self.net_adapters:
                raise ModelError("New-VMSwitch", f"No network adapter named '{p['adapter']}'.", "ObjectNotFound",
                                 anchor="New-VMSwitch -Name $P.name -NetAdapterName")
            if any(s.adapter == p["adapter"] for s in self.switches.values()):
                raise ModelError("New-VMSwitch", f"'{p['adapter']}' is already bound to a virtual switch.",
                                 "InvalidOperation", anchor="New-VMSwitch -Name $P.name -NetAdapterName")
        elif p["type"] not in ("internal", "private"):
            raise ModelError("New-VMSwitch", f"Invalid SwitchType '{p['type']}'.", "InvalidArgument",
                             anchor="New-VMSwitch -Name $P.name -SwitchType")
        sw = Switch(id=str(uuid.uuid4()), name=p["name"], type=p["type"],
                    adapter=p["adapter"] if p["type"] == "external" else None, notes=p["notes"])
        self.switches[_key(sw.name)] = sw
        return self._switch_facts(sw)

    def _set_switch(self, p: dict[str, Any]) -> dict[str, Any]:
        sw = self.switches.get(_key(p["name"]))
        if sw is None:
            raise ModelError("Set-VMSwitch", f"Hyper-V was unable to find a virtual switch with name \"{p['name']}\".",
                             "ObjectNotFound")
        sw.notes = p["notes"]
        return self._switch_facts(sw)

    def _remove_switch(self, p: dict[str, Any]) -> dict[str, Any]:
        sw = self.switches.pop(_key(p["name"]), None)
        if sw is not None:
            for vm in self.vms.values():
                for a in vm.adapters:
                    if a.switch == sw.name:
                        a.switch = ""
        return {"removed": sw is not None}

    # -- storage directories ---------------------------------------------------------------
    def _dir_facts(self, path: str) -> dict[str, Any]:
        exists = _key(path) in self.dirs
        return {"path": self.dirs.get(_key(path), path), "exists": exists,
                "marker": self.markers.get(_key(path)) if exists else None}

    def _get_storage(self, p: dict[str, Any]) -> dict[str, Any]:
        paths = list(p["paths"])
        root = p["root"]
        if root and _key(root) in self.dirs:
            paths += sorted(d for k, d in self.dirs.items() if _parent(k) == _key(root))
        seen: list[str] = []
        for path in paths:
            if _key(path) not in {_key(s) for s in seen}:
                seen.append(path)
        return {"directories": [self._dir_facts(x) for x in seen]}

    def _ensure_storage(self, p: dict[str, Any]) -> dict[str, Any]:
        self.mkdir(p["path"])
        self.markers[_key(p["path"])] = p["marker"]
        return {"path": p["path"], "exists": True, "marker": p["marker"]}

    def _remove_storage(self, p: dict[str, Any]) -> dict[str, Any]:
        k = _key(p["path"])
        if k not in self.dirs:
            return {"removed": False, "kept": False}
        self.markers.pop(k, None)
        inside = any(_parent(f) == k for f in self.files) or any(_parent(d) == k for d in self.dirs)
        if inside:
            return {"removed": False, "kept": True}
        del self.dirs[k]
        return {"removed": True, "kept": False}


def _line_of(text: str, anchor: str) -> int:
    """1-based line of the first occurrence of ``anchor`` (PowerShell's ScriptLineNumber)."""
    for i, ln in enumerate(text.splitlines()):
        if anchor in ln:
            return i + 1
    return 0
