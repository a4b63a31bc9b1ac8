"""Send jobs to a Ray cluster through Ray Job Submission, with the cluster's auth token.

`palimpsest submit JOB.yaml --address http://HEAD:8265 --storage DIR` uploads this project
(without .venv, runs, caches) as the job's working_dir, ships the two source packages as
py_modules (so the cluster runs this tree's code even where an older copy is installed), and
runs `python -m palimpsest.cli run JOB --out STORAGE/NAME-TIME` (or `tune`) on the head. The
run folder, with the Ray Train checkpoints inside it, lives in that storage: shared storage
that every node mounts at the same path, so a restarted worker on another node finds the
checkpoints and the folder outlives the job. With a bucket (`--storage s3://BUCKET/PREFIX`)
the job's storage_path is the bucket: Ray Train writes the checkpoints there, and the run
folder, written on the head meanwhile, is uploaded to STORAGE/NAME-TIME when the job ends.

The token: `--token-file`, else $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token (Ray's
own order), sent as `Authorization: Bearer …` on every request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import palimpsest

# Never uploaded: environments, results, caches, version control. Ray's own default is to
# upload everything (and to fail past 512 MiB).
UPLOAD_EXCLUDES = [".venv/", "venv/", "runs/", ".git/", "**/__pycache__/", "*.pyc", "*.egg-info/", ".pytest_cache/",
                   ".hypothesis/", ".palimpsest-cache/", "build/", "dist/", "checkpoints/", "*.pt", "*.safetensors"]
METADATA_RUN_FOLDER = "palimpsest_run_folder"
METADATA_JOB = "palimpsest_job"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# The job's environment tells its driver it was submitted, by which version, to which address
# (its hints name `palimpsest submit --resume ... --address ...`); the driver's first line says
# it started: until then `submit` has not reported success.
SUBMITTED_ENV = "PALIMPSEST_SUBMITTED"
STARTED = "[palimpsest] started on the cluster"
START_WAIT_S = 600.0


class SubmitError(Exception):
    """Bad input or an unusable cluster: one line, exit 2."""


@dataclass
class Submission:
    job_id: str
    run_folder: str
    entrypoint: str


def project_root() -> Path:
    """The project this command runs from: the folder holding pyproject.toml and platform/palimpsest."""
    root = Path(palimpsest.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise SubmitError(f"{root}: not a Palimpsest checkout (no pyproject.toml); submit runs from a clone of the "
                          "project, which it uploads as the job's working_dir")
    return root


def dashboard_address(address: str | None) -> str:
    """The job server's URL: --address, else $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS if it is http(s)://."""
    origin = "--address"
    if not address:
        for variable in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            value = os.environ.get(variable, "")
            if value.startswith(("http://", "https://")):
                address, origin = value, f"${variable}"
                break
    if not address:
        raise SubmitError("--address: give the cluster's job server, http://HEAD:8265 (with `ray dashboard "
                          "cluster.yaml` open: http://127.0.0.1:8265), or set $RAY_API_SERVER_ADDRESS")
    if not address.startswith(("http://", "https://")):
        raise SubmitError(f"--address: {address} (from {origin}) is not a job server URL; give http://HOST:8265 "
                          "(the dashboard port, not the GCS port 6379)")
    return address.rstrip("/")


def auth_token(token_file: Path | None = None) -> str | None:
    if token_file is not None:
        if not token_file.is_file():
            raise SubmitError(f"--token-file: {token_file} does not exist")
        return token_file.read_text().strip() or None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        if not Path(path).expanduser().is_file():
            raise SubmitError(f"$RAY_AUTH_TOKEN_PATH: {path} does not exist")
        return Path(path).expanduser().read_text().strip() or None
    default = Path.home() / ".ray" / "auth_token"
    if not default.is_file():
        return None
    return default.read_text().strip() or None


def client(address: str | None, token_file: Path | None = None):
    """A JobSubmissionClient for the cluster, its token attached; SubmitError if the cluster cannot be used."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    from palimpsest.ray_connection import _tcp_unreachable

    url = dashboard_address(address)
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    if ":" not in host_port:
        host_port += ":443" if url.startswith("https") else ":80"
    problem = _tcp_unreachable(host_port, 5.0)
    if problem:
        raise SubmitError(f"--address: cannot reach the job server at {url}: {problem} (is `ray dashboard "
                          "cluster.yaml` running, or the cluster up?)")
    token = auth_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        found = JobSubmissionClient(url, headers=headers)
        found.list_jobs()  # the version check does not need the token; this does
        return found
    except AuthenticationError as error:
        why = "was refused" if token else "is missing"
        raise SubmitError(f"the cluster at {url} requires its auth token, and this machine's {why} "
                          f"({str(error).splitlines()[0]}); give --token-file, or set $RAY_AUTH_TOKEN or "
                          "$RAY_AUTH_TOKEN_PATH (the token is in ~/.ray/auth_token where the cluster was "
                          "started)") from None
    except (ConnectionError, RuntimeError) as error:
        raise SubmitError(f"--address: {url} does not answer as a Ray job server: "
                          f"{str(error).splitlines()[0]}") from None


def entrypoint(job: Path, sets: list[str], run_folder: str, *, search: bool) -> tuple[str, str]:
    """The command the cluster runs, and the job's path inside the uploaded project."""
    root = project_root()
    try:
        relative = job.resolve().relative_to(root)
    except ValueError:
        raise SubmitError(f"{job}: outside the project folder that is uploaded ({root}); put the job (and any "
                          "local data it reads) under it, e.g. in jobs/") from None
    words = ["python", "-m", "palimpsest.cli", "tune" if search else "run", relative.as_posix()]
    for item in sets:
        words += ["--set", item]
    words += ["--out", run_folder]
    return " ".join(shlex.quote(word) for word in words), relative.as_posix()


def storage_root(storage: str | None, spec) -> str:
    """Where run folders go on the cluster: --storage, else the job's storage_path."""
    from palimpsest.storage import StorageError, check_storage_path, is_uri

    chosen = storage or getattr(spec, "storage_path", None)
    if not chosen:
        raise SubmitError("--storage: give shared storage that every node mounts at the same path (e.g. /mnt/shared/"
                          "palimpsest on EFS or NFS) or a bucket URI (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX), or "
                          "set storage_path in the job: the run folder and its checkpoints must outlive the job and "
                          "any one node")
    if is_uri(chosen):
        try:
            return check_storage_path(chosen, "--storage")
        except StorageError as error:
            raise SubmitError(str(error)) from None
    if not chosen.startswith("/"):
        raise SubmitError(f"--storage: {chosen} is relative; give an absolute path, the same on every node")
    return chosen.rstrip("/")


# With a bucket for storage, the run folder is written here on the head while the job runs,
# then uploaded beside its checkpoints (palimpsest.storage).
HEAD_RUNS = "/tmp/palimpsest-runs"
STOP_WAIT_S = 120
BUCKET_KINDS = ("train", "continual", "privacy_sweep", "rl")
BUCKET_KINDS_WHY = {
    "unlearn": "an unlearn job's training workers read the tokenizer and write the ledger and each request's "
               "model in the run folder, which with a bucket stays on the head",
    "bench": "a bench job writes no checkpoints",
}


def _revalidate(job: Path, sets: list[str]) -> None:
    """The job with the storage the cluster will use, checked here (nothing sent if it is refused)."""
    from palimpsest.spec import SpecError, load_spec

    try:
        load_spec(job, sets)
    except SpecError as error:
        raise SubmitError("; ".join(error.problems)) from None


def submit(job: Path, sets: list[str], spec, *, address: str | None, storage: str | None, search: bool,
           token_file: Path | None = None, name: str | None = None) -> tuple[object, Submission]:
    from palimpsest.run_folder import utc_stamp
    from palimpsest.storage import is_uri, join

    root = storage_root(storage, spec)
    stamp = utc_stamp()
    folder_name = f"{spec.name}{'-tune' if search else ''}-{stamp}"
    if is_uri(root) and spec.kind not in BUCKET_KINDS:
        raise SubmitError(f"--storage: {root}: {BUCKET_KINDS_WHY.get(spec.kind, 'it writes no checkpoints')}; "
                          f"give a path that every node mounts (kinds that take a bucket: {', '.join(BUCKET_KINDS)})")
    if is_uri(root):  # checkpoints straight to the bucket; the folder follows when the job ends
        run_folder = join(root, folder_name)
        field = "job.storage_path" if spec.kind == "privacy_sweep" else "storage_path"
        sets = [*sets, f"{field}={root}"]
        _revalidate(job, sets)
        command, relative = entrypoint(job, sets, f"{HEAD_RUNS}/{folder_name}", search=search)
    else:
        run_folder = f"{root}/{folder_name}"
        command, relative = entrypoint(job, sets, run_folder, search=search)
    return _send(command, run_folder, relative, f"palimpsest-{folder_name}", address=address, token_file=token_file,
                 search=search,
                 name=name)


def resubmit(resume: str, *, address: str | None, search: bool, token_file: Path | None = None,
             name: str | None = None) -> tuple[object, Submission]:
    """`palimpsest run --resume RUN_FOLDER` (or `tune`) on the cluster: a folder on its shared storage, or one
    uploaded to a bucket, which the head fetches into /tmp/palimpsest-runs/NAME and uploads back."""
    from palimpsest.run_folder import utc_stamp
    from palimpsest.storage import StorageError, check_storage_path, is_uri, name_of

    try:
        checked = check_storage_path(resume, "--resume")
    except StorageError as error:
        raise SubmitError(str(error)) from None
    if not is_uri(resume) and not resume.startswith("/"):
        raise SubmitError(f"--resume: {resume} is relative; give the run folder's absolute path on the cluster's "
                          "storage, or its bucket URI (palimpsest jobs lists them)")
    words = ["python", "-m", "palimpsest.cli", "tune" if search else "run", "--resume", checked]
    if is_uri(resume):
        words += ["--out", HEAD_RUNS]
    command = " ".join(shlex.quote(word) for word in words)
    return _send(command, checked, "", f"palimpsest-resume-{name_of(checked)}-{utc_stamp()}", address=address,
                 search=search,
                 token_file=token_file, name=name)


def _send(command: str, run_folder: str, relative: str, submission_id: str, *, address: str | None,
          token_file: Path | None, name: str | None, search: bool = False) -> tuple[object, Submission]:
    import json

    import ray

    jobs = client(address, token_file)
    submitted = {"version": palimpsest.__version__, "ray": ray.__version__, "packages": package_versions(),
                 "address": dashboard_address(address),
                 "run_folder": run_folder, "search": search,
                 "token_file": str(token_file) if token_file else None}
    runtime_env = {
        "working_dir": str(project_root()),
        "excludes": UPLOAD_EXCLUDES,
        "py_modules": [str(Path(palimpsest.__file__).parent), str(_envs_package())],
        "env_vars": {"PYTHONUNBUFFERED": "1", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_COLOR_PREFIX": "0",
                     # `palimpsest stop` sends SIGTERM; Ray's SIGKILL follows after this many seconds
                     # (3 by default), time for the driver to mark its folder and upload it to a bucket.
                     "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), SUBMITTED_ENV: json.dumps(submitted)},
    }
    # Ray logs each packaging step at INFO, and warns that it skips .git and .venv, which we
    # exclude anyway; what was uploaded is not news to the user.
    _quiet_ray()
    job_id = jobs.submit_job(entrypoint=command, runtime_env=runtime_env,
                             submission_id=name or submission_id.replace(".", "-"),
                             metadata={METADATA_RUN_FOLDER: run_folder, METADATA_JOB: relative or "(resume)"})
    return jobs, Submission(job_id, run_folder, command)


# Libraries whose version changes what a run computes: the head says where its own differ from the submitter's.
COMPARED_PACKAGES = ("torch", "transformers", "peft", "opacus", "deepspeed", "gymnasium", "numpy")


def package_versions() -> dict[str, str | None]:
    """{package: installed version, local build tag dropped (a CUDA torch is the same torch)}."""
    import importlib.metadata

    found = {}
    for name in COMPARED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def await_start(jobs, job_id: str, *, timeout_s: float = START_WAIT_S, poll_s: float = 0.5) -> bool:
    """Until the job's driver says it started (True), or `timeout_s` passed with the job still pending
    (False: Ray is still setting up its environment). A job that ended before it started raises
    SubmitError with the reason from its log and the fix."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        status = jobs.get_job_status(job_id)
        status = str(getattr(status, "value", status))
        logs = jobs.get_job_logs(job_id) or ""
        if STARTED in logs:
            return True
        if status in TERMINAL:
            if not logs.strip():  # it never ran a line: Ray could not set up its environment (the reason is Ray's)
                message = getattr(jobs.get_job_info(job_id), "message", None) or "no log"
                raise SubmitError(f"job {job_id} {status.lower()} before it started: {message}")
            raise SubmitError(cannot_start(job_id, status, logs))
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def cannot_start(job_id: str, status: str, logs: str) -> str:
    """Why a job ended before palimpsest started on the head, and what fixes it."""
    import re

    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    ours = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if ours:  # the driver ran and refused (bad input on the cluster's side): its own words
        return "; ".join(ours)
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line) or "not found" in line]
    reason = errors[-1] if errors else (lines[-1] if lines else f"the job {status.lower()} without a log")
    return (f"the cluster's Python cannot run palimpsest: {reason} (job {job_id} {status.lower()} before it started). "
            "Ray runs a job with the `python` first on the PATH of the shell that started Ray on the head: start "
            "Ray from the environment palimpsest is installed in (`source .venv/bin/activate && ray start --head "
            "...`; cluster.yaml's start commands put ~/venv/bin first), or install the project there (`pip install "
            "-e .`), then submit again")


def _quiet_ray() -> None:
    for logger in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                   "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir"):
        logging.getLogger(logger).setLevel(logging.ERROR)


def _envs_package() -> Path:
    import palimpsest_envs

    return Path(palimpsest_envs.__file__).parent


def follow(jobs, job_id: str, write) -> str:
    """Stream the job's log to `write` until it ends; return its final status."""

    async def tail():
        async for lines in jobs.tail_job_logs(job_id):
            write(lines)

    _quiet_ray()  # "WebSocket closed" at the end
    try:
        asyncio.run(tail())
    except RuntimeError:  # the stream closed early (a head restart): the status below still says how it ended
        pass
    return wait(jobs, job_id)


def wait(jobs, job_id: str, poll_s: float = 1.0) -> str:
    import time

    while True:
        status = jobs.get_job_status(job_id)
        status = str(getattr(status, "value", status))
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def exit_code(info) -> int:
    """The driver's own exit code where Ray knows it (2 bad input, 130 interrupted, 1 failed), else 0/1/143."""
    status = str(getattr(info.status, "value", info.status))
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return 143
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1
