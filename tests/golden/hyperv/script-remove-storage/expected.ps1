# pacsinfra-script: remove-storage v1
# Rendered by pacsinfra from templates/hyperv/remove-storage.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJwYXRoIjoiRDpcXFBBQ1NcXEZsYXNoIn0='
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
    # The mark goes; the directory goes only when nothing else is left in it.
    if (-not (Test-Path -LiteralPath $P.path -PathType Container)) {
        Write-PacsinfraResult @{ removed = $false; kept = $false }; exit 0
    }
    $mark = Join-Path $P.path '.pacsinfra-storage.json'
    if (Test-Path -LiteralPath $mark) { Remove-Item -LiteralPath $mark -Force }
    if (@(Get-ChildItem -LiteralPath $P.path -Force).Count -eq 0) {
        Remove-Item -LiteralPath $P.path -Force
        Write-PacsinfraResult @{ removed = $true; kept = $false }
    } else {
        Write-PacsinfraResult @{ removed = $false; kept = $true }
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
