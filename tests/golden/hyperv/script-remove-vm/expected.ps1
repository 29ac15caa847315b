# pacsinfra-script: remove-vm v1
# Rendered by pacsinfra from templates/hyperv/remove-vm.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJpZCI6IjViMGE1YzRlLTExMTEtNGE3Yy05ZDFlLTAxMjM0NTY3ODlhYiIsInBhdGhzIjpbIkQ6XFxQQUNTXFxGbGFzaFxcc3QtbWFyeS1hcmNoaXZlLTEtb3MudmhkeCJdfQ=='
function Write-PacsinfraResult($Value) {
    # UTF-8 bytes straight to stdout: the WinRM shell's code page (437) would mangle names
    $json = ConvertTo-Json -InputObject $Value -Depth 8 -Compress
    $bytes = [Text.Encoding]::UTF8.GetBytes($json + "`n")
    $out = [Console]::OpenStandardOutput()
    $out.Write($bytes, 0, $bytes.Length)
    $out.Flush()
}
try {
    $P = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($PacsinfraParams)) | ConvertFrom-Json
    # Parts first (disks), the marked VM last: a run killed half-way leaves a marked VM
    # that the next run deletes again, never unmarked orphan disks. Disk files named after
    # the VM ($P.paths) go even when no VM uses them (leftovers of a failed create).
    $vm = $null
    if ($P.id) { $vm = Get-VM -Id $P.id -ErrorAction SilentlyContinue }
    if ($vm) {
        if ("$($vm.State)" -ne 'Off') { Stop-VM -VM $vm -TurnOff -Force }
        foreach ($drive in @(Get-VMHardDiskDrive -VM $vm)) {
            $path = $drive.Path
            Remove-VMHardDiskDrive -VMHardDiskDrive $drive
            if (Test-Path -LiteralPath $path) { Remove-Item -LiteralPath $path -Force }
        }
    }
    foreach ($path in @($P.paths)) {
        if (Test-Path -LiteralPath $path) { Remove-Item -LiteralPath $path -Force }
    }
    if ($vm) { Remove-VM -VM $vm -Force }
    Write-PacsinfraResult @{ removed = [bool]$vm }
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
