# pacsinfra-script: new-vm v1
# Rendered by pacsinfra from templates/hyperv/new-vm.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJhZGFwdGVycyI6W3sibWFjIjpudWxsLCJuYW1lIjoibmljMCIsInN3aXRjaCI6IlBBQ1MtRElDT00iLCJ2bGFuIjoxMTB9LHsibWFjIjoiMDAxNTVEQUFCQjAxIiwibmFtZSI6Im5pYzEiLCJzd2l0Y2giOiJQQUNTLU1HTVQiLCJ2bGFuIjoxMH1dLCJkaXNrcyI6W3sibWF4aW11bV9pb3BzIjowLCJtb2RlIjoiZGlmZmVyZW5jaW5nIiwicGF0aCI6IkQ6XFxQQUNTXFxGbGFzaFxcc3QtbWFyeS1hcmNoaXZlLTEtb3MudmhkeCIsInNpemVfbWliIjo0MDk2MCwic291cmNlIjoiQzpcXEltYWdlc1xcZGViaWFuMTIudmhkeCIsInR5cGUiOiJEeW5hbWljIn0seyJtYXhpbXVtX2lvcHMiOjUwMDAsIm1vZGUiOm51bGwsInBhdGgiOiJFOlxcUEFDU1xcTmVhcmxpbmVcXHN0LW1hcnktYXJjaGl2ZS0xLWRhdGEudmhkeCIsInNpemVfbWliIjo0MTk0MzA0LCJzb3VyY2UiOm51bGwsInR5cGUiOiJGaXhlZCJ9XSwiZ2VuZXJhdGlvbiI6MiwiZ3B1cyI6W3siaW5zdGFuY2VfcGF0aCI6IlxcXFw/XFxQQ0kjVkVOXzEwREUmREVWXzIyMzUjR1BVMCJ9LHsiaW5zdGFuY2VfcGF0aCI6IlxcXFw/XFxQQ0kjVkVOXzEwREUmREVWXzIyMzUjR1BVMCJ9XSwibWVtb3J5Ijp7ImR5bmFtaWMiOnRydWUsIm1heGltdW1fbWliIjozMjc2OCwibWluaW11bV9taWIiOjE2Mzg0LCJzdGFydHVwX21pYiI6MzI3Njh9LCJuYW1lIjoic3QtbWFyeS1hcmNoaXZlLTEiLCJub3RlcyI6InBhY3NpbmZyYTp7XCJvd25lclwiOntcImFkZHJlc3NcIjpcIm1hY2hpbmUuYXJjaGl2ZVswXVwiLFwibGluZWFnZVwiOlwiMGY0ZTZjMWEtbGluZWFnZVwiLFwic2l0ZVwiOlwic3QtbWFyeVwifSxcInJlY29yZGVkXCI6e1wiYW50aV9hZmZpbml0eV9ncm91cFwiOlwic3QtbWFyeS1hcmNoaXZlXCIsXCJjbHVzdGVyX2hpbnRcIjpudWxsLFwiY3B1XCI6e1wibGltaXRfbWh6XCI6MTYwMDAsXCJyZXNlcnZhdGlvbl9taHpcIjo4MDAwLFwic2hhcmVzXCI6MTYwMDB9LFwiZ3B1X3Byb2ZpbGVcIjpcImE0MC04cVwiLFwiaG9sZHNfZGF0YVwiOnRydWUsXCJob3N0X2hpbnRcIjpudWxsLFwiaG9zdG5hbWVcIjpcInN0LW1hcnktYXJjaGl2ZS0xXCIsXCJodWdlcGFnZXNcIjpmYWxzZSxcImltYWdlXCI6e1wibW9kZVwiOlwiZGlmZmVyZW5jaW5nXCIsXCJ2aGR4XCI6XCJDOlxcXFxJbWFnZXNcXFxcZGViaWFuMTIudmhkeFwifSxcImluZGV4XCI6MCxcIm1lbW9yeV9sb2NrXCI6ZmFsc2UsXCJtZW1vcnlfcmVzZXJ2YXRpb25fbWliXCI6MTYzODQsXCJtb3VudHNcIjp7XCJkYXRhXCI6XCIvdmFyL2xpYi9wYWNzaW5mcmFcIn0sXCJuaWNzXCI6W3tcImFkZHJlc3NcIjpcIjEwLjEwLjExMC4xMVwiLFwiZ2F0ZXdheVwiOlwiMTAuMTAuMTEwLjFcIixcIm10dVwiOjkwMDAsXCJwcmVmaXhcIjoyNH0se1wiYWRkcmVzc1wiOm51bGwsXCJnYXRld2F5XCI6bnVsbCxcIm10dVwiOjE1MDAsXCJwcmVmaXhcIjpudWxsfV0sXCJyb2xlXCI6XCJhcmNoaXZlXCIsXCJzc2hfYXV0aG9yaXplZF9rZXlzXCI6W1wic3NoLWVkMjU1MTkgQUFBQUMzTnphIGFkbWluQHNpdGVcIl19fSIsInBhdGgiOiJEOlxcUEFDU1xcRmxhc2giLCJwcm9jZXNzb3IiOnsiY291bnQiOjgsIm1heGltdW0iOjc3LCJyZXNlcnZlIjozOSwid2VpZ2h0IjoyMDB9LCJzZWN1cmVfYm9vdCI6eyJlbmFibGVkIjp0cnVlLCJ0ZW1wbGF0ZSI6Ik1pY3Jvc29mdFVFRklDZXJ0aWZpY2F0ZUF1dGhvcml0eSJ9LCJzdGFydCI6dHJ1ZX0='
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
