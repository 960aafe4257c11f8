<#
.SYNOPSIS
Start the Whisper transcription service and wait until its model is loaded.

.DESCRIPTION
The PowerShell twin of scripts/start_transcription_service.sh (the tested one): the same
options, the same messages, the same behaviour.

In Docker (the default): a container named codex-transcription-service, restarted unless
stopped, port 8765 published, jobs in the volume codex-transcription-storage and models in
codex-transcription-models (the same ones docker-compose.yml uses). The image is built first
when it is missing. A running container is only reported; a stopped one is started again.

  scripts/start_transcription_service.ps1 [-Port N] [-Model NAME] [-Gpu] [-Build]
  scripts/start_transcription_service.ps1 -Stop

Without Docker: `python -m service` from the repository's .venv, in the background, with
service.pid and service.log in the storage directory. The service itself needs Linux, macOS
or WSL (it locks its storage with flock): on Windows, run it in Docker Desktop (the default).
Unlike the .sh twin, this does not restart it after a crash (the .sh runs it under
scripts/supervise.sh); -Systemd hands over to the .sh twin, which installs a systemd unit.

  scripts/start_transcription_service.ps1 -NoDocker [-Port N] [-Model NAME] [-Gpu]
  scripts/start_transcription_service.ps1 -NoDocker -Stop
  scripts/start_transcription_service.ps1 -Systemd [-Port N] [-Model NAME] [-Gpu] [-Stop]

Exit status: 0 ready (or stopped), 1 failed (the reason and the last log lines are printed).

.PARAMETER Port
Port on this machine (default 8765).
.PARAMETER Model
Model to serve (default: the image's, large-v3; without Docker the service's, tiny.en); with
Docker, also the model baked into a new image.
.PARAMETER Gpu
Run on an NVIDIA GPU (Docker: the :cuda image and --gpus all).
.PARAMETER Timeout
Seconds to wait for the model to load (default 600).
.PARAMETER StorageDir
Jobs and transcripts. Docker: a volume name or an absolute host path (default
codex-transcription-storage); without Docker: a directory (default ./service-storage).
.PARAMETER ModelDir
Model cache, the same way (default codex-transcription-models; without Docker the service's
default, <StorageDir>/models).
.PARAMETER Name
Container name (default codex-transcription-service).
.PARAMETER Image
Image (default whisper-transcription-service:latest, or :cuda with -Gpu).
.PARAMETER Build
Build the image even when it exists (an existing container keeps its image until removed).
.PARAMETER NoDocker
Run the service from .venv instead of a container.
.PARAMETER Systemd
Run it from .venv as a systemd unit (Linux only: runs scripts/start_transcription_service.sh --systemd).
.PARAMETER Stop
Stop the service (the container, or the background process).
#>
[CmdletBinding()]
param(
    [ValidateRange(1, 65535)][int]$Port = 8765,
    [string]$Model = "",
    [switch]$Gpu,
    [ValidateRange(0, 86400)][int]$Timeout = 600,
    [string]$StorageDir = "",
    [string]$ModelDir = "",
    [string]$Name = "codex-transcription-service",
    [string]$Image = "",
    [switch]$Build,
    [switch]$NoDocker,
    [switch]$Systemd,
    [switch]$Stop
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = "Stop"

$Repo = Split-Path -Parent $PSScriptRoot
$ScriptName = "scripts/start_transcription_service.ps1"
# The CUDA image: keep these two in step with docker-compose.gpu.yml and the .sh twin.
$CudaBaseImage = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
$CudaTorchIndexUrl = ""  # pip's default index: PyPI's Linux torch wheels are the CUDA build
$ContainerPort = 8765
$LogLines = 40
$StopTimeout = 60
$Docker = if ($env:DOCKER) { $env:DOCKER } else { "docker" }
$OnWindows = [System.Environment]::OSVersion.Platform -eq [System.PlatformID]::Win32NT

function Fail([string]$Message) {
    [Console]::Error.WriteLine("error: $Message")
    exit 1
}

# -- waiting for /health ------------------------------------------------------------------

# One line, like scripts/health_check.sh: "healthy: ..." or "unhealthy: ...".
function Get-HealthLine([string]$Url) {
    try {
        $health = Invoke-RestMethod -Uri "$Url/health" -TimeoutSec 3 -UseBasicParsing
    } catch {
        return @{ Ok = $false; Line = "unhealthy: no health answer from $Url/health ($($_.Exception.Message))" }
    }
    $reason = if ($health.PSObject.Properties["error"]) { ": $($health.error)" } else { "" }
    if ($health.status -ne "error" -and -not $health.model_loaded) {
        return @{ Ok = $false; Line = "unhealthy: model $($health.model) not loaded yet (worker $($health.worker))" }
    }
    if ($health.status -ne "ok") {
        return @{ Ok = $false; Line = "unhealthy: status $($health.status)$reason (model $($health.model), worker $($health.worker))" }
    }
    return @{ Ok = $true; Line = "healthy: model $($health.model) loaded, worker $($health.worker), $($health.queue_size) job(s) queued ($Url/health)" }
}

# Poll until the model is loaded. $Alive says whether the service can still come up; $Logs
# prints its last log lines.
function Wait-Ready([string]$Url, [scriptblock]$Alive, [scriptblock]$Logs, [string]$StopCommand) {
    $deadline = (Get-Date).AddSeconds($Timeout)
    $nextNote = (Get-Date).AddSeconds(30)
    Write-Host "waiting up to ${Timeout}s for the model to load at $Url ..."
    while ($true) {
        $check = Get-HealthLine $Url
        if ($check.Ok) {
            Write-Host $check.Line
            Write-Host "Transcription service ready at $Url"
            return $true
        }
        if (-not (& $Alive)) {
            [Console]::Error.WriteLine("error: the service stopped during start-up (last check: $($check.Line))")
            & $Logs | ForEach-Object { [Console]::Error.WriteLine($_) }
            return $false
        }
        if ((Get-Date) -ge $deadline) {
            [Console]::Error.WriteLine("error: the service was not ready within ${Timeout}s (last check: $($check.Line))")
            & $Logs | ForEach-Object { [Console]::Error.WriteLine($_) }
            [Console]::Error.WriteLine("It is still running: check again with scripts/health_check.sh $Url, or stop it with $StopCommand")
            return $false
        }
        if ((Get-Date) -ge $nextNote) {
            Write-Host "still waiting: $($check.Line)"
            $nextNote = (Get-Date).AddSeconds(30)
        }
        Start-Sleep -Seconds 1
    }
}

# -- without Docker -----------------------------------------------------------------------

function Get-RunningService([string]$PidFile) {
    if (-not (Test-Path $PidFile)) { return $null }
    $text = (Get-Content $PidFile -Raw) -replace "[^0-9]", ""
    if (-not $text) { return $null }
    $process = Get-Process -Id ([int]$text) -ErrorAction SilentlyContinue
    if ($process -and $process.ProcessName -like "python*") { return $process }
    return $null
}

function Get-ProcessPort($Process) {
    $commandLine = $null
    if ($Process.PSObject.Properties["CommandLine"]) { $commandLine = $Process.CommandLine }
    if ($commandLine -and $commandLine -match "--port[ =](\d+)") { return [int]$Matches[1] }
    return $Port
}

function Test-PortInUse([int]$Number) {
    $client = New-Object System.Net.Sockets.TcpClient
    try {
        $client.Connect("127.0.0.1", $Number)
        return $true
    } catch {
        return $false
    } finally {
        $client.Dispose()
    }
}

function Quote([string]$Argument) {
    if ($Argument -match '[\s"]') { return '"' + ($Argument -replace '"', '\"') + '"' }
    return $Argument
}

function Invoke-NoDocker {
    if (-not $StorageDir) { $StorageDir = Join-Path $Repo "service-storage" }
    New-Item -ItemType Directory -Force -Path $StorageDir | Out-Null
    $storage = (Resolve-Path $StorageDir).Path
    $pidFile = Join-Path $storage "service.pid"
    $logFile = Join-Path $storage "service.log"
    $stopCommand = "$ScriptName -NoDocker -Stop -StorageDir $storage"
    $script:LogFile = $logFile
    $logs = { "last $LogLines lines of $($script:LogFile):"; if (Test-Path $script:LogFile) { Get-Content $script:LogFile -Tail $LogLines } }
    $alive = { -not $script:ServiceProcess.HasExited }

    if ($Stop) {
        $process = Get-RunningService $pidFile
        if (-not $process) {
            Remove-Item -Force -ErrorAction SilentlyContinue $pidFile
            Write-Host "transcription service is not running (storage $storage)"
            return 0
        }
        $id = $process.Id
        Write-Host "stopping transcription service (pid $id) ..."
        # SIGTERM where there are signals, so a running job is put back in the queue cleanly.
        $kill = Get-Command kill -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
        if ($kill) { & $kill.Source -s TERM $id } else { Stop-Process -Id $id }
        if (-not $process.WaitForExit($StopTimeout * 1000)) {
            Write-Host "still running after ${StopTimeout}s; killing it (its jobs are recovered at the next start)"
            Stop-Process -Id $id -Force -ErrorAction SilentlyContinue
        }
        Remove-Item -Force -ErrorAction SilentlyContinue $pidFile
        Write-Host "stopped transcription service (pid $id)"
        return 0
    }

    $python = $env:TRANSCRIPTION_PYTHON
    if (-not $python) {
        $python = if ($OnWindows) { Join-Path $Repo ".venv\Scripts\python.exe" } else { Join-Path $Repo ".venv/bin/python" }
    }
    if (-not (Test-Path $python)) { Fail "no Python environment at ${python}: run 'bash scripts/install.sh' first" }

    $running = Get-RunningService $pidFile
    if ($running) {
        Write-Host "transcription service is already running (pid $($running.Id))"
        $script:ServiceProcess = $running
        if (Wait-Ready "http://localhost:$(Get-ProcessPort $running)" $alive $logs $stopCommand) { return 0 }
        return 1
    }
    if (Test-PortInUse $Port) {
        Fail "port $Port is already in use on this machine: stop what listens there, or choose another with -Port"
    }
    $arguments = @("-m", "service", "--port", "$Port", "--storage-dir", (Quote $storage))
    if ($Model) { $arguments += @("--model", (Quote $Model)) }
    if ($Gpu) { $arguments += @("--device", "cuda") }
    if ($ModelDir) {
        New-Item -ItemType Directory -Force -Path $ModelDir | Out-Null
        $env:SERVICE_MODEL_DIR = (Resolve-Path $ModelDir).Path
    }
    Write-Host "starting transcription service on port $Port (storage $storage, log $logFile)"
    # The service logs to stderr (service.log); stdout, nearly empty, goes to service.out.log.
    $options = @{
        FilePath = $python
        ArgumentList = $arguments
        WorkingDirectory = $Repo
        RedirectStandardError = $logFile
        RedirectStandardOutput = (Join-Path $storage "service.out.log")
        PassThru = $true
    }
    if ($OnWindows) { $options.WindowStyle = "Hidden" }
    $process = Start-Process @options
    Set-Content -Path $pidFile -Value $process.Id
    $script:ServiceProcess = $process
    if (Wait-Ready "http://localhost:$Port" $alive $logs $stopCommand) { return 0 }
    if ($process.HasExited) { Remove-Item -Force -ErrorAction SilentlyContinue $pidFile }
    return 1
}

# -- Docker -------------------------------------------------------------------------------

# Runs docker with stdout and stderr captured as text; never throws on a non-zero exit.
function Invoke-Docker([string[]]$Arguments) {
    $previous = $ErrorActionPreference
    $ErrorActionPreference = "Continue"
    try {
        $output = & $Docker @Arguments 2>&1 | ForEach-Object { "$_" }
        return [pscustomobject]@{ Code = $LASTEXITCODE; Output = @($output) }
    } finally {
        $ErrorActionPreference = $previous
    }
}

function Get-ContainerState {
    $result = Invoke-Docker @("container", "inspect", "--format", "{{.State.Status}}", $Name)
    if ($result.Code -ne 0) { return "" }
    return ($result.Output -join "").Trim()
}

function Get-ContainerLogs {
    "last $LogLines log lines of container ${Name}:"
    (Invoke-Docker @("logs", "--tail", "$LogLines", $Name)).Output
}

function Build-Image([string]$Tag) {
    $modelArg = if ($Model) { $Model } else { "large-v3" }
    $arguments = @("build", "--tag", $Tag, "--build-arg", "MODEL=$modelArg")
    if ($Gpu) { $arguments += @("--build-arg", "BASE_IMAGE=$CudaBaseImage", "--build-arg", "TORCH_INDEX_URL=$CudaTorchIndexUrl") }
    Write-Host "building image $Tag (model $modelArg; this downloads the model once) ..."
    & $Docker @arguments $Repo | Out-Host
    if ($LASTEXITCODE -ne 0) { Fail "docker build of $Tag failed (see above)" }
}

function Invoke-InDocker {
    if (-not (Get-Command $Docker -ErrorAction SilentlyContinue)) {
        Fail "docker is not installed (or not on PATH). Install Docker, or run the service without it: $ScriptName -NoDocker"
    }
    $info = Invoke-Docker @("info", "--format", "{{.ServerVersion}}")
    if ($info.Code -ne 0) {
        $reason = ($info.Output | Where-Object { $_ -and $_.Trim() } | Select-Object -Last 1)
        if ($reason -notmatch "[.?!]$") { $reason = "$reason." }
        Fail "cannot reach the Docker daemon: $reason Start Docker (or check that you may use it), or run the service without it: $ScriptName -NoDocker"
    }
    $tag = if ($Image) { $Image } elseif ($Gpu) { "whisper-transcription-service:cuda" } else { "whisper-transcription-service:latest" }
    $storage = if ($StorageDir) { $StorageDir } else { "codex-transcription-storage" }
    $models = if ($ModelDir) { $ModelDir } else { "codex-transcription-models" }
    $stopCommand = if ($Name -eq "codex-transcription-service") { "$ScriptName -Stop" } else { "$ScriptName -Stop -Name $Name" }

    if ($Stop) {
        $state = Get-ContainerState
        if ($state -notin @("running", "restarting", "paused")) {
            $suffix = if ($state) { " ($state)" } else { "" }
            Write-Host "container $Name is not running$suffix"
            return 0
        }
        Write-Host "stopping container $Name ..."
        Invoke-Docker @("stop", "--time", "$StopTimeout", $Name) | Out-Null
        Write-Host "stopped container $Name"
        return 0
    }

    if ($Build) { Build-Image $tag }
    $state = Get-ContainerState
    switch ($state) {
        "running" {
            Write-Host "container $Name is already running (to change its port, model or GPU: $ScriptName -Stop, docker rm $Name, then start again)"
        }
        { $_ -in @("exited", "created") } {
            Write-Host "starting stopped container $Name"
            if ((Invoke-Docker @("start", $Name)).Code -ne 0) { Fail "docker start $Name failed" }
        }
        "paused" {
            Write-Host "unpausing container $Name"
            if ((Invoke-Docker @("unpause", $Name)).Code -ne 0) { Fail "docker unpause $Name failed" }
        }
        "" {
            if ((Invoke-Docker @("image", "inspect", $tag)).Code -ne 0) { Build-Image $tag }
            $arguments = @("run", "--detach", "--init", "--name", $Name, "--restart", "unless-stopped",
                "--stop-timeout", "$StopTimeout", "--publish", "${Port}:$ContainerPort",
                "--volume", "${storage}:/service-storage", "--volume", "${models}:/models")
            if ($Model) { $arguments += @("--env", "SERVICE_MODEL=$Model") }
            if ($Gpu) { $arguments += @("--gpus", "all", "--env", "SERVICE_DEVICE=cuda") }
            Write-Host "starting container $Name from $tag on port $Port"
            $run = Invoke-Docker ($arguments + @($tag))
            if ($run.Code -ne 0) {
                $run.Output | ForEach-Object { [Console]::Error.WriteLine($_) }
                Fail "docker run of $tag failed (see above)"
            }
        }
        default {
            Get-ContainerLogs | ForEach-Object { [Console]::Error.WriteLine($_) }
            Fail "container $Name is $state; see its logs above (remove it with: docker rm -f $Name)"
        }
    }
    if ($Build -and $state) {
        Write-Host "note: the new image is used once the container is removed: $ScriptName -Stop, docker rm $Name, then start again"
    }
    $published = (Invoke-Docker @("port", $Name, "$ContainerPort/tcp")).Output | Select-Object -First 1
    $hostPort = if ($published -match ":(\d+)$") { $Matches[1] } else { $Port }
    $alive = { (Get-ContainerState) -eq "running" }
    $logs = { Get-ContainerLogs }
    if (Wait-Ready "http://localhost:$hostPort" $alive $logs $stopCommand) { return 0 }
    return 1
}

# systemd is the .sh twin's: the same flags, handed over to bash.
function Invoke-Systemd {
    $bash = Get-Command bash -CommandType Application -ErrorAction SilentlyContinue | Select-Object -First 1
    if ($OnWindows -or -not $bash) {
        Fail "-Systemd installs a systemd unit, which needs Linux (run scripts/start_transcription_service.sh --systemd there); on Windows, run the service in Docker Desktop: $ScriptName without -NoDocker"
    }
    $arguments = @((Join-Path $PSScriptRoot "start_transcription_service.sh"), "--systemd", "--port", "$Port", "--timeout", "$Timeout")
    if ($Model) { $arguments += @("--model", $Model) }
    if ($Gpu) { $arguments += "--gpu" }
    if ($StorageDir) { $arguments += @("--storage-dir", $StorageDir) }
    if ($ModelDir) { $arguments += @("--model-dir", $ModelDir) }
    if ($Stop) { $arguments += "--stop" }
    & $bash.Source @arguments
    return $LASTEXITCODE
}

if ($Systemd) { exit (Invoke-Systemd) } elseif ($NoDocker) { exit (Invoke-NoDocker) } else { exit (Invoke-InDocker) }
