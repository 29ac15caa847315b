# pacsinfra-script: host-info v1
# Rendered by pacsinfra from templates/hyperv/host-info.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'e30='
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
    # The host's clock (for CPU reserve/limit percentages), processors and memory.
    $cpu = @(Get-CimInstance -ClassName Win32_Processor)
    $os = Get-CimInstance -ClassName Win32_OperatingSystem
    $vmHost = Get-VMHost
    Write-PacsinfraResult @{
        host = $vmHost.ComputerName
        mhz = [int]($cpu | Measure-Object -Property MaxClockSpeed -Maximum).Maximum
        logical_processors = [int]$vmHost.LogicalProcessorCount
        memory_mib = [int64]($vmHost.MemoryCapacity / 1mb)
        memory_free_mib = [int64]($os.FreePhysicalMemory / 1kb)
    }
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
