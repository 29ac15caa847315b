# pacsinfra-script: get-storage v1
# Rendered by pacsinfra from templates/hyperv/get-storage.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJwYXRocyI6WyJEOlxcUEFDU1xcRmxhc2giXSwicm9vdCI6IkQ6XFxQQUNTIn0='
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
    # A storage class is a directory; its mark is the file .pacsinfra-storage.json in it.
    # Looks at the given paths and, when a root is given, at every directory under it.
    $paths = @($P.paths)
    if ($P.root -and (Test-Path -LiteralPath $P.root -PathType Container)) {
        $paths += @(Get-ChildItem -LiteralPath $P.root -Directory | ForEach-Object { $_.FullName })
    }
    $dirs = @(foreach ($path in ($paths | Select-Object -Unique)) {
        $exists = Test-Path -LiteralPath $path -PathType Container
        $marker = $null
        $mark = Join-Path $path '.pacsinfra-storage.json'
        if ($exists -and (Test-Path -LiteralPath $mark)) { $marker = Get-Content -LiteralPath $mark -Raw }
        @{ path = $path; exists = $exists; marker = $marker }
    })
    Write-PacsinfraResult @{ directories = $dirs }
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
