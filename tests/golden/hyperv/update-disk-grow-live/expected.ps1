# pacsinfra-script: set-vm v1
# Rendered by pacsinfra from templates/hyperv/set-vm.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJhZGFwdGVycyI6bnVsbCwiZGlza3MiOlt7Im1heGltdW1faW9wcyI6MCwibW9kZSI6ImRpZmZlcmVuY2luZyIsInBhdGgiOiJEOlxcUEFDU1xcRmxhc2hcXHN0LW1hcnktYXJjaGl2ZS0xLW9zLnZoZHgiLCJzaXplX21pYiI6NDA5NjAsInNvdXJjZSI6IkM6XFxJbWFnZXNcXGRlYmlhbjEyLnZoZHgiLCJ0eXBlIjoiRHluYW1pYyJ9LHsibWF4aW11bV9pb3BzIjo1MDAwLCJtb2RlIjpudWxsLCJwYXRoIjoiRTpcXFBBQ1NcXE5lYXJsaW5lXFxzdC1tYXJ5LWFyY2hpdmUtMS1kYXRhLnZoZHgiLCJzaXplX21pYiI6NDE5NDMwNCwic291cmNlIjpudWxsLCJ0eXBlIjoiRml4ZWQifV0sImdwdXMiOlt7Imluc3RhbmNlX3BhdGgiOiJcXFxcP1xcUENJI1ZFTl8xMERFJkRFVl8yMjM1I0dQVTAifSx7Imluc3RhbmNlX3BhdGgiOiJcXFxcP1xcUENJI1ZFTl8xMERFJkRFVl8yMjM1I0dQVTAifV0sImlkIjoiNWIwYTVjNGUtMTExMS00YTdjLTlkMWUtMDEyMzQ1Njc4OWFiIiwibWVtb3J5IjpudWxsLCJuYW1lIjoic3QtbWFyeS1hcmNoaXZlLTEiLCJub3RlcyI6InBhY3NpbmZyYTp7XCJvd25lclwiOntcImFkZHJlc3NcIjpcIm1hY2hpbmUuYXJjaGl2ZVswXVwiLFwibGluZWFnZVwiOlwiMGY0ZTZjMWEtbGluZWFnZVwiLFwic2l0ZVwiOlwic3QtbWFyeVwifSxcInJlY29yZGVkXCI6e1wiYW50aV9hZmZpbml0eV9ncm91cFwiOlwic3QtbWFyeS1hcmNoaXZlXCIsXCJjbHVzdGVyX2hpbnRcIjpudWxsLFwiY3B1XCI6e1wibGltaXRfbWh6XCI6MTYwMDAsXCJyZXNlcnZhdGlvbl9taHpcIjo4MDAwLFwic2hhcmVzXCI6MTYwMDB9LFwiZ3B1X3Byb2ZpbGVcIjpcImE0MC04cVwiLFwiaG9sZHNfZGF0YVwiOnRydWUsXCJob3N0X2hpbnRcIjpudWxsLFwiaG9zdG5hbWVcIjpcInN0LW1hcnktYXJjaGl2ZS0xXCIsXCJodWdlcGFnZXNcIjpmYWxzZSxcImltYWdlXCI6e1wibW9kZVwiOlwiZGlmZmVyZW5jaW5nXCIsXCJ2aGR4XCI6XCJDOlxcXFxJbWFnZXNcXFxcZGViaWFuMTIudmhkeFwifSxcImluZGV4XCI6MCxcIm1lbW9yeV9sb2NrXCI6ZmFsc2UsXCJtZW1vcnlfcmVzZXJ2YXRpb25fbWliXCI6MTYzODQsXCJtb3VudHNcIjp7XCJkYXRhXCI6XCIvdmFyL2xpYi9wYWNzaW5mcmFcIn0sXCJuaWNzXCI6W3tcImFkZHJlc3NcIjpcIjEwLjEwLjExMC4xMVwiLFwiZ2F0ZXdheVwiOlwiMTAuMTAuMTEwLjFcIixcIm10dVwiOjkwMDAsXCJwcmVmaXhcIjoyNH0se1wiYWRkcmVzc1wiOm51bGwsXCJnYXRld2F5XCI6bnVsbCxcIm10dVwiOjE1MDAsXCJwcmVmaXhcIjpudWxsfV0sXCJyb2xlXCI6XCJhcmNoaXZlXCIsXCJzc2hfYXV0aG9yaXplZF9rZXlzXCI6W1wic3NoLWVkMjU1MTkgQUFBQUMzTnphIGFkbWluQHNpdGVcIl19fSIsInByb2Nlc3NvciI6eyJjb3VudCI6OCwibWF4aW11bSI6NzcsInJlc2VydmUiOjM5LCJ3ZWlnaHQiOjIwMH0sInNodXRkb3duX3RpbWVvdXQiOjEyMCwic3RhcnQiOm51bGwsInN0b3BfZmlyc3QiOmZhbHNlfQ=='
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
    # Only the sections present (non-null) are changed; the rest of the VM is left alone.
    $vm = Get-VM -Id $P.id
    $wasRunning = "$($vm.State)" -eq 'Running'
    if ($P.stop_first -and $wasRunning) { Stop-PacsinfraVm $vm $P.shutdown_timeout }
    if ($null -ne $P.notes) { Set-VM -VM $vm -Notes $P.notes }
    if ($null -ne $P.processor) { Set-PacsinfraProcessor $vm $P.processor }
    if ($null -ne $P.memory) { Set-PacsinfraMemory $vm $P.memory }
    if ($null -ne $P.adapters) {
        $wanted = @($P.adapters | ForEach-Object { $_.name })
        Get-VMNetworkAdapter -VM $vm | Where-Object { $wanted -notcontains $_.Name } | Remove-VMNetworkAdapter
        foreach ($nic in $P.adapters) { Set-PacsinfraAdapter $vm $nic }
    }
    if ($null -ne $P.disks) {
        $wantedPaths = @($P.disks | ForEach-Object { $_.path })
        foreach ($drive in @(Get-VMHardDiskDrive -VM $vm)) {
            if ($wantedPaths -notcontains $drive.Path) {
                $old = $drive.Path
                Remove-VMHardDiskDrive -VMHardDiskDrive $drive
                Remove-Item -LiteralPath $old -Force
            }
        }
        foreach ($disk in $P.disks) {
            $drive = Get-VMHardDiskDrive -VM $vm | Where-Object { $_.Path -eq $disk.path }
            if (-not $drive) { Add-PacsinfraDisk $vm $disk; continue }
            if ((Get-VHD -Path $disk.path).Size -lt ($disk.size_mib * 1mb)) {
                Resize-VHD -Path $disk.path -SizeBytes ($disk.size_mib * 1mb)
            }
            Set-VMHardDiskDrive -VMHardDiskDrive $drive -MaximumIOPS $disk.maximum_iops
        }
    }
    if ($null -ne $P.gpus) {
        Get-VMGpuPartitionAdapter -VM $vm | Remove-VMGpuPartitionAdapter
        foreach ($gpu in $P.gpus) {
            if ($gpu.instance_path) { Add-VMGpuPartitionAdapter -VM $vm -InstancePath $gpu.instance_path }
            else { Add-VMGpuPartitionAdapter -VM $vm }
        }
    }
    $state = "$((Get-VM -Id $P.id).State)"
    if ($P.start -eq $true -and $state -ne 'Running') { Start-VM -VM $vm }
    if ($P.start -eq $false -and $state -eq 'Running') { Stop-PacsinfraVm $vm $P.shutdown_timeout }
    Write-PacsinfraResult (Get-PacsinfraVmFacts (Get-VM -Id $P.id))
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
