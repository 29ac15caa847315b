# pacsinfra-script: ensure-storage v1
# Rendered by pacsinfra from templates/hyperv/ensure-storage.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJtYXJrZXIiOiJwYWNzaW5mcmE6e1wib3duZXJcIjp7XCJhZGRyZXNzXCI6XCJzdG9yYWdlLmZsYXNoXCIsXCJsaW5lYWdlXCI6XCIwZjRlNmMxYS1saW5lYWdlXCIsXCJzaXRlXCI6XCJzdC1tYXJ5XCJ9LFwicmVjb3JkZWRcIjp7XCJlbmNyeXB0ZWRcIjp0cnVlLFwiaW9wc19saW1pdFwiOjIwMDAwLFwiaW9wc19yZXNlcnZhdGlvblwiOm51bGwsXCJwcm92aXNpb25pbmdcIjpcInRoaW5cIixcInNldHRpbmdzXCI6e1wicGF0aFwiOlwiRDpcXFxcUEFDU1xcXFxGbGFzaFwifSxcInRpZXJcIjpcInBlcmZvcm1hbmNlXCJ9fSIsInBhdGgiOiJEOlxcUEFDU1xcRmxhc2gifQ=='
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
    if (-not (Test-Path -LiteralPath $P.path -PathType Container)) {
        New-Item -ItemType Directory -Path $P.path -Force | Out-Null
    }
    Set-Content -LiteralPath (Join-Path $P.path '.pacsinfra-storage.json') -Value $P.marker -NoNewline -Encoding UTF8
    Write-PacsinfraResult @{ path = $P.path; exists = $true; marker = $P.marker }
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
