# pacsinfra-script: new-vm v1
# Rendered by pacsinfra from templates/hyperv/new-vm.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJhZGFwdGVycyI6W3sibWFjIjpudWxsLCJuYW1lIjoibmljMCIsInN3aXRjaCI6IlBBQ1MtRElDT00iLCJ2bGFuIjoxMTB9XSwiZGlza3MiOlt7Im1heGltdW1faW9wcyI6MCwibW9kZSI6ImNvcHkiLCJwYXRoIjoiRDpcXFBBQ1NcXGZsYXNoXFxzdC1tYXJ5LWRpY29tZ3ctMS1vcy52aGR4Iiwic2l6ZV9taWIiOjgxOTIwLCJzb3VyY2UiOiJDOlxcSW1hZ2VzXFx3aW4yMDIyLnZoZHgiLCJ0eXBlIjoiRHluYW1pYyJ9XSwiZ2VuZXJhdGlvbiI6MiwiZ3B1cyI6W10sIm1lbW9yeSI6eyJkeW5hbWljIjpmYWxzZSwibWF4aW11bV9taWIiOjgxOTIsIm1pbmltdW1fbWliIjo4MTkyLCJzdGFydHVwX21pYiI6ODE5Mn0sIm5hbWUiOiJzdC1tYXJ5LWRpY29tZ3ctMSIsIm5vdGVzIjoicGFjc2luZnJhOntcIm93bmVyXCI6e1wiYWRkcmVzc1wiOlwibWFjaGluZS5kaWNvbWd3WzBdXCIsXCJsaW5lYWdlXCI6XCIwZjRlNmMxYS1saW5lYWdlXCIsXCJzaXRlXCI6XCJzdC1tYXJ5XCJ9LFwicmVjb3JkZWRcIjp7XCJhbnRpX2FmZmluaXR5X2dyb3VwXCI6bnVsbCxcImNsdXN0ZXJfaGludFwiOm51bGwsXCJjcHVcIjp7XCJsaW1pdF9taHpcIjpudWxsLFwicmVzZXJ2YXRpb25fbWh6XCI6bnVsbCxcInNoYXJlc1wiOm51bGx9LFwiZ3B1X3Byb2ZpbGVcIjpudWxsLFwiaG9sZHNfZGF0YVwiOmZhbHNlLFwiaG9zdF9oaW50XCI6bnVsbCxcImhvc3RuYW1lXCI6bnVsbCxcImh1Z2VwYWdlc1wiOmZhbHNlLFwiaW1hZ2VcIjp7XCJvc1wiOlwid2luZG93c1wiLFwidmhkeFwiOlwiQzpcXFxcSW1hZ2VzXFxcXHdpbjIwMjIudmhkeFwifSxcImluZGV4XCI6MCxcIm1lbW9yeV9sb2NrXCI6dHJ1ZSxcIm1lbW9yeV9yZXNlcnZhdGlvbl9taWJcIjo4MTkyLFwibW91bnRzXCI6e30sXCJuaWNzXCI6W3tcImFkZHJlc3NcIjpudWxsLFwiZ2F0ZXdheVwiOm51bGwsXCJtdHVcIjoxNTAwLFwicHJlZml4XCI6bnVsbH1dLFwicm9sZVwiOlwiZGljb21nd1wiLFwic3NoX2F1dGhvcml6ZWRfa2V5c1wiOltdfX0iLCJwYXRoIjoiRDpcXFBBQ1NcXGZsYXNoIiwicHJvY2Vzc29yIjp7ImNvdW50Ijo0LCJtYXhpbXVtIjoxMDAsInJlc2VydmUiOjAsIndlaWdodCI6MTAwfSwic2VjdXJlX2Jvb3QiOnsiZW5hYmxlZCI6dHJ1ZSwidGVtcGxhdGUiOiJNaWNyb3NvZnRXaW5kb3dzIn0sInN0YXJ0IjpmYWxzZX0='
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
    if ((Find-PacsinfraVm $P.name).Count -gt 0) {
        Write-Error -Category ResourceExists -Message ("a virtual machine named '{0}' already exists" -f $P.name)
    }
    $vm = New-VM -Name $P.name -Generation $P.generation -NoVHD -Path $P.path -MemoryStartupBytes ($P.memory.startup_mib * 1mb)
    # The mark goes on first, so a VM left behind by a failed create is found and removed.
    Set-VM -VM $vm -Notes $P.notes -AutomaticCheckpointsEnabled $false
    Set-PacsinfraProcessor $vm $P.processor
    Set-PacsinfraMemory $vm $P.memory
    if ($P.secure_boot.enabled) {
        Set-VMFirmware -VM $vm -EnableSecureBoot On -SecureBootTemplate $P.secure_boot.template
    } else {
        Set-VMFirmware -VM $vm -EnableSecureBoot Off
    }
    Get-VMNetworkAdapter -VM $vm | Remove-VMNetworkAdapter
    foreach ($nic in $P.adapters) { Set-PacsinfraAdapter $vm $nic }
    foreach ($disk in $P.disks) { Add-PacsinfraDisk $vm $disk }
    $boot = Get-VMHardDiskDrive -VM $vm | Select-Object -First 1
    if ($boot) { Set-VMFirmware -VM $vm -FirstBootDevice $boot }
    foreach ($gpu in $P.gpus) {
        if ($gpu.instance_path) { Add-VMGpuPartitionAdapter -VM $vm -InstancePath $gpu.instance_path }
        else { Add-VMGpuPartitionAdapter -VM $vm }
    }
    if ($P.start) { Start-VM -VM $vm }
    Write-PacsinfraResult (Get-PacsinfraVmFacts (Get-VM -Id $vm.Id))
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
