# pacsinfra-script: get-vm v1
# Rendered by pacsinfra from templates/hyperv/get-vm.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJtYXJrX3ByZWZpeCI6InBhY3NpbmZyYToiLCJuYW1lIjoic3QtbWFyeS1hcmNoaXZlLTEifQ=='
function Write-PacsinfraResult($Value) {
    # UTF-8 bytes straight to stdout: the WinRM shell's code page (437) would mangle names
    $json = ConvertTo-Json -InputObject $Value -Depth 8 -Compress
    $bytes = [Text.Encoding]::UTF8.GetBytes($json + "`n")
    $out = [Console]::OpenStandardOutput()
    $out.Write($bytes, 0, $bytes.Length)
    $out.Flush()
}
function Get-PacsinfraVmFacts($Vm) {
    # One VM as the JSON the driver parses back into a MachineSpec (sizes in MiB).
    $proc = Get-VMProcessor -VM $Vm
    $mem = Get-VMMemory -VM $Vm
    $disks = @(Get-VMHardDiskDrive -VM $Vm | Sort-Object -Property @('ControllerNumber', 'ControllerLocation') | ForEach-Object {
        $vhd = Get-VHD -Path $_.Path
        @{ path = $_.Path; size_mib = [int64]($vhd.Size / 1mb); type = "$($vhd.VhdType)"
           parent = $vhd.ParentPath; maximum_iops = [int64]$_.MaximumIOPS }
    })
    $adapters = @(Get-VMNetworkAdapter -VM $Vm | ForEach-Object {
        $vlan = Get-VMNetworkAdapterVlan -VMNetworkAdapter $_
        $vlanId = $null
        if ("$($vlan.OperationMode)" -eq 'Access') { $vlanId = [int]$vlan.AccessVlanId }
        @{ name = $_.Name; switch = $_.SwitchName; mac = $_.MacAddress
           dynamic_mac = [bool]$_.DynamicMacAddressEnabled; vlan = $vlanId; addresses = @($_.IPAddresses) }
    })
    $gpus = @()
    if (Get-Command Get-VMGpuPartitionAdapter -ErrorAction SilentlyContinue) {
        $gpus = @(Get-VMGpuPartitionAdapter -VM $Vm | ForEach-Object { @{ instance_path = $_.InstancePath } })
    }
    $secureBoot = @{ enabled = $false; template = $null }
    if ($Vm.Generation -eq 2) {
        $fw = Get-VMFirmware -VM $Vm
        $secureBoot = @{ enabled = ("$($fw.SecureBoot)" -eq 'On'); template = $fw.SecureBootTemplate }
    }
    @{
        id = "$($Vm.Id)"; name = $Vm.Name; state = "$($Vm.State)"; generation = $Vm.Generation; notes = $Vm.Notes
        processor = @{ count = $proc.Count; reserve = $proc.Reserve; maximum = $proc.Maximum; weight = $proc.RelativeWeight }
        memory = @{ dynamic = [bool]$mem.DynamicMemoryEnabled; startup_mib = [int64]($mem.Startup / 1mb)
                    minimum_mib = [int64]($mem.Minimum / 1mb); maximum_mib = [int64]($mem.Maximum / 1mb) }
        disks = $disks; adapters = $adapters; gpus = $gpus
        secure_boot = $secureBoot
    }
}
function Find-PacsinfraVm($Name) {
    # Exact names: -Name would treat [ ] * ? as wildcards
    @(Get-VM | Where-Object { $_.Name -eq $Name })
}
function Stop-PacsinfraVm($Vm, $TimeoutSeconds) {
    # A guest shutdown through the integration services, then power off if it hangs
    $job = Stop-VM -VM $Vm -Force -AsJob
    Wait-Job -Job $job -Timeout $TimeoutSeconds | Out-Null
    if ("$((Get-VM -Id $Vm.Id).State)" -ne 'Off') { Stop-VM -VM $Vm -TurnOff -Force }
    Remove-Job -Job $job -Force
}
function Set-PacsinfraProcessor($Vm, $Proc) {
    Set-VMProcessor -VM $Vm -Count $Proc.count -Reserve $Proc.reserve -Maximum $Proc.maximum -RelativeWeight $Proc.weight
}
function Set-PacsinfraMemory($Vm, $Mem) {
    if ($Mem.dynamic) {
        Set-VMMemory -VM $Vm -DynamicMemoryEnabled $true -StartupBytes ($Mem.startup_mib * 1mb) -MinimumBytes ($Mem.minimum_mib * 1mb) -MaximumBytes ($Mem.maximum_mib * 1mb)
    } else {
        Set-VMMemory -VM $Vm -DynamicMemoryEnabled $false -StartupBytes ($Mem.startup_mib * 1mb)
    }
}
function Add-PacsinfraDisk($Vm, $Disk) {
    # A disk named after its VM that no VM uses is a leftover of an interrupted run: replace it.
    if (Test-Path -LiteralPath $Disk.path) { Remove-Item -LiteralPath $Disk.path -Force }
    if ($Disk.source -and $Disk.mode -eq 'differencing') {
        New-VHD -Path $Disk.path -ParentPath $Disk.source -Differencing | Out-Null
    } elseif ($Disk.source) {
        Copy-Item -LiteralPath $Disk.source -Destination $Disk.path
    } elseif ($Disk.type -eq 'Fixed') {
        New-VHD -Path $Disk.path -SizeBytes ($Disk.size_mib * 1mb) -Fixed | Out-Null
    } else {
        New-VHD -Path $Disk.path -SizeBytes ($Disk.size_mib * 1mb) -Dynamic | Out-Null
    }
    if ((Get-VHD -Path $Disk.path).Size -lt ($Disk.size_mib * 1mb)) {
        Resize-VHD -Path $Disk.path -SizeBytes ($Disk.size_mib * 1mb)
    }
    Add-VMHardDiskDrive -VM $Vm -ControllerType SCSI -Path $Disk.path -MaximumIOPS $Disk.maximum_iops
}
function Set-PacsinfraAdapter($Vm, $Nic) {
    $a = Get-VMNetworkAdapter -VM $Vm -Name $Nic.name -ErrorAction SilentlyContinue
    if (-not $a) {
        Add-VMNetworkAdapter -VM $Vm -Name $Nic.name -SwitchName $Nic.switch
        $a = Get-VMNetworkAdapter -VM $Vm -Name $Nic.name
    } elseif ($a.SwitchName -ne $Nic.switch) {
        Connect-VMNetworkAdapter -VMNetworkAdapter $a -SwitchName $Nic.switch
    }
    if ($Nic.mac) { Set-VMNetworkAdapter -VMNetworkAdapter $a -StaticMacAddress $Nic.mac }
    if ($null -ne $Nic.vlan) {
        Set-VMNetworkAdapterVlan -VMNetworkAdapter $a -Access -VlanId $Nic.vlan
    } else {
        Set-VMNetworkAdapterVlan -VMNetworkAdapter $a -Untagged
    }
}
try {
    $P = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($PacsinfraParams)) | ConvertFrom-Json
    # By name (every VM of that name: Hyper-V allows duplicates), or every VM whose Notes
    # carry pacsinfra's mark.
    if ($P.name) {
        $vms = Find-PacsinfraVm $P.name
    } else {
        $vms = @(Get-VM | Where-Object { "$($_.Notes)".StartsWith($P.mark_prefix) })
    }
    Write-PacsinfraResult @{ vms = @($vms | ForEach-Object { Get-PacsinfraVmFacts $_ }) }
} catch {
    $e = $_
    Write-PacsinfraResult @{ error = @{
        type = $e.Exception.GetType().FullName
        message = $e.Exception.Message
        cmdlet = "$($e.InvocationInfo.MyCommand.Name)"
        line = $e.InvocationInfo.ScriptLineNumber
        category = "$($e.CategoryInfo.Category)"
    } }
    exit 1
}
exit 0
