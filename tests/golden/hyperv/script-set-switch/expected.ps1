# pacsinfra-script: set-switch v1
# Rendered by pacsinfra from templates/hyperv/set-switch.ps1.j2. Do not edit.
# Contract: the parameters arrive as ONE JSON document, base64-encoded below (never pasted
# into code); the result is one JSON line on stdout; a failure is one JSON line
# {"error": {"type", "message", "cmdlet", "line", "category"}} and exit code 1.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$PacsinfraParams = 'eyJuYW1lIjoiUEFDUy1ESUNPTSIsIm5vdGVzIjoicGFjc2luZnJhOntcIm93bmVyXCI6e319In0='
function Write-PacsinfraResult($Value) {
    # UTF-8 bytes straight to stdout: the WinRM shell's code page (437) would mangle names
    $json = ConvertTo-Json -InputObject $Value -Depth 8 -Compress
    $bytes = [Text.Encoding]::UTF8.GetBytes($json + "`n")
    $out = [Console]::OpenStandardOutput()
    $out.Write($bytes, 0, $bytes.Length)
    $out.Flush()
}
function Find-PacsinfraSwitch($Name) {
    # Exact names: -Name would treat [ ] * ? as wildcards
    @(Get-VMSwitch | Where-Object { $_.Name -eq $Name })
}
function Get-PacsinfraSwitchFacts($Switch) {
    $adapter = $null
    if ($Switch.NetAdapterInterfaceDescription) {
        $adapter = (Get-NetAdapter -InterfaceDescription $Switch.NetAdapterInterfaceDescription).Name
    }
    @{ id = "$($Switch.Id)"; name = $Switch.Name; type = "$($Switch.SwitchType)".ToLower()
       adapter = $adapter; notes = $Switch.Notes }
}
try {
    $P = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($PacsinfraParams)) | ConvertFrom-Json
    $sw = Find-PacsinfraSwitch $P.name
    if ($sw.Count -ne 1) {
        Write-Error -Category ObjectNotFound -Message ("no single virtual switch named '{0}'" -f $P.name)
    }
    Set-VMSwitch -VMSwitch $sw[0] -Notes $P.notes
    Write-PacsinfraResult (Get-PacsinfraSwitchFacts (Get-VMSwitch -Id $sw[0].Id))
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
