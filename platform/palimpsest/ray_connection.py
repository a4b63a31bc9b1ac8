"""Where a job runs: start an embedded local Ray or join a cluster, checked within seconds.

`ray_address` resolves --address / $RAY_ADDRESS; `check_ray_address` probes a cluster's GCS
(or Ray Client port) before `ray.init` would retry for minutes; `init_ray` starts or joins
Ray with the settings every run shares, and filters Ray's own noise from forwarded output.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

PROBE_TIMEOUT_S = 3.0
GCS_DEFAULT_PORT = 6379
RAY_CLIENT_DEFAULT_PORT = 10001
LOCAL_POLL_S = 0.1  # how often Ray Train's controller polls its workers on a local Ray (see init_ray)
CLUSTER_POLL_S = 0.5  # and on a cluster this process joins


class RayUnavailable(ConnectionError):
    """No usable Ray cluster where the user pointed; the message is one line saying where and why."""


def ray_address(address: str | None = None) -> tuple[str | None, str]:
    """The cluster to join and where that came from: ('HOST:PORT', '--address'), (…, '$RAY_ADDRESS'),
    or (None, '') for a Ray started here."""
    if address:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
    return None, ""


def check_ray_address(address: str, origin: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Make sure a Ray cluster answers at `address` before ray.init, which would retry for minutes.

    `address` is what the user gave (HOST:PORT, ray://HOST[:PORT] or auto), `origin` where
    it came from (--address or $RAY_ADDRESS); both are named in the error.

    Raises:
        RayUnavailable: nothing answers, something that is not a Ray GCS answers, the
            cluster wants an auth token this machine does not have, or the address is malformed.
    """
    where = f"{address} (from {origin})"
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme == "ray":  # Ray Client: a gRPC server on the head node
            host, port = _host_port(rest, RAY_CLIENT_DEFAULT_PORT, where)
            problem = _grpc_unreachable(_join(host, port), timeout)
            if problem:
                raise RayUnavailable(f"cannot reach the Ray Client server at {where}: {problem}")
            return
        if scheme in ("http", "https"):
            raise RayUnavailable(f"{where} is a dashboard / job-submission URL; `palimpsest run` joins a cluster at "
                                 f"its GCS address HOST:{GCS_DEFAULT_PORT} (or ray://HOST:{RAY_CLIENT_DEFAULT_PORT})")
        raise RayUnavailable(f"{where}: unknown scheme {scheme}://; give HOST:PORT, ray://HOST:PORT or auto")
    if address == "auto":
        if os.environ.get("RAY_ADDRESS") and os.environ["RAY_ADDRESS"] != "auto":
            # ray.init(address="auto") takes $RAY_ADDRESS first; so do we.
            check_ray_address(os.environ["RAY_ADDRESS"], f"$RAY_ADDRESS, for {origin} auto", timeout)
            return
        from ray._private.services import canonicalize_bootstrap_address

        try:  # the latest `ray start` on this machine, else any running GCS process
            found = canonicalize_bootstrap_address("auto")
        except (ConnectionError, ValueError):
            raise RayUnavailable(f"no running Ray cluster found on this machine for auto (from {origin}); start one "
                                 "with `ray start --head`, give its HOST:PORT, or leave out --address for a local Ray")
        if not found:
            raise RayUnavailable(f"no running Ray cluster found on this machine for auto (from {origin})")
        _check_gcs(found, f"{where}, found {found}", timeout, auto=True)
        return
    host, port = _host_port(address, None, where)
    _check_gcs(_join(host, port), where, timeout, auto=False)


def _host_port(text: str, default_port: int | None, where: str) -> tuple[str, int]:
    from ray._private.services import parse_address

    parsed = parse_address(text) if ":" in text else ((text, str(default_port)) if default_port and text else None)
    if not parsed or not parsed[0] or not parsed[1].isdigit() or not 0 < int(parsed[1]) < 65536:
        raise RayUnavailable(f"{where}: expected HOST:PORT (the head node's GCS port, {GCS_DEFAULT_PORT} by default), "
                             f"ray://HOST:PORT or auto")
    return parsed[0], int(parsed[1])


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_gcs(target: str, where: str, timeout: float, *, auto: bool) -> None:
    from ray._private.services import parse_address, resolve_ip_for_localhost

    host, port = parse_address(target)
    connects_to = _join(resolve_ip_for_localhost(host), int(port))  # what ray.init will dial
    shown = where if connects_to in where else f"{where}, which Ray dials as {connects_to}"
    try:
        import grpc
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # no gRPC stubs: a plain TCP connect still catches a dead address
        problem = _tcp_unreachable(connects_to, timeout)
        if problem:
            raise RayUnavailable(f"cannot reach Ray at {shown}: {problem}") from None
        return

    def ask(metadata=()):
        channel = grpc.insecure_channel(connects_to)
        try:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout, metadata=metadata)
            return None
        except grpc.RpcError as error:
            return error
        finally:
            channel.close()

    error = ask()
    if error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED:
        # Token authentication (on by default since Ray 2.52): send our token only where
        # ray.init would (RAY_AUTH_MODE=token, or a local cluster found by auto).
        headers = _auth_headers(auto)
        if headers is None:
            raise RayUnavailable(f"Ray at {shown} requires token authentication: set RAY_AUTH_MODE=token and give "
                                 "the cluster's token ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
        error = ask(tuple(headers.items()))
        if error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise RayUnavailable(f"Ray at {shown} refused this machine's auth token (RAY_AUTH_TOKEN, "
                                 "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    if error is not None:
        raise RayUnavailable(f"cannot reach Ray at {shown}: {_describe_rpc_error(error, timeout)}")


def _auth_headers(auto: bool) -> dict | None:
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:
        return None
    mode = os.environ.get("RAY_AUTH_MODE")
    loader = AuthenticationTokenLoader.instance()
    if (mode or "").lower() == "token" or (auto and mode is None):
        if loader.has_token(ignore_auth_mode=True):
            return dict(loader.get_token_for_http_header())
    return None


def _describe_rpc_error(error, timeout: float) -> str:
    import grpc

    details = str(error.details() or "")
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout:g} s"
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        if "refused" in details.lower():
            return "connection refused (nothing listens on that port)"
        if any(word in details.lower() for word in ("dns", "resolv", "lookup")):
            return "cannot resolve the host name"
        if "http/2" in details.lower() or "socket closed" in details.lower():
            return "something answers on that port, but not a Ray GCS"
        return details.split(";")[-1].strip() or "unavailable"
    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
        return (f"something answers on that port, but not a Ray GCS ({details}); the GCS port is "
                f"{GCS_DEFAULT_PORT} unless `ray start --port` chose another, and Ray Client takes ray://HOST:PORT")
    return f"{error.code().name}: {details}"


def _grpc_unreachable(target: str, timeout: float) -> str | None:
    """None if an HTTP/2 (gRPC) connection to `target` comes up within `timeout`, else why not."""
    import grpc

    problem = _tcp_unreachable(target, timeout)  # a refusal is known at once
    if problem:
        return problem
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return None
    except grpc.FutureTimeoutError:
        return f"no gRPC server answers within {timeout:g} s"
    finally:
        channel.close()


def _tcp_unreachable(target: str, timeout: float) -> str | None:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except ConnectionRefusedError:
        return "connection refused (nothing listens on that port)"
    except socket.gaierror:
        return "cannot resolve the host name"
    except OSError as error:
        return error.strerror or str(error)


def submitted_job() -> bool:
    """Whether this process is the driver of a job sent through Ray Job Submission."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ


def init_ray(address: str | None = None):
    """Start an embedded local Ray, or connect to `address` / $RAY_ADDRESS.

    Reuses a session that is already up (the test suite shares one).

    Raises:
        RayUnavailable: the cluster named by `address` or $RAY_ADDRESS cannot be joined
            (found out within seconds, before ray.init would retry for minutes).
    """
    import ray

    if ray.is_initialized():
        return ray
    target, origin = ray_address(address)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train's controller advances a run (start, each worker-group change, the end) once
    # per health check, 2 s by default, and a worker's report waits until the controller has
    # polled the one before it (a queue of one): most of a small fit's fixed cost here.
    # Measured on three Ray Train tests side by side: 0.25 s ran them in 75-79 s against 87-92
    # s at 2 s; a 2-worker fit of 20 steps with 4 checkpoints (2026-12-07, idle, 3 fits
    # each): 22.9 s at 2 s, 15.4-16.6 s at 0.5 s, 13.6-14.2 s at 0.1 s. On one machine a
    # poll is a local call: LOCAL_POLL_S; a cluster's controller polls every worker over the
    # network, so 0.5 s there. (A missed poll is no failure: that takes
    # RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 minutes.) The controller takes the
    # driver's RAY_TRAIN_* variables, on a cluster too.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                          str(CLUSTER_POLL_S if target and target != "local" else LOCAL_POLL_S))
    # Ray Train v2 reroutes print() through its logger, which shows each line twice on
    # the driver; plain prints reach the driver once through log_to_driver.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    # Our progress lines and display replace Ray Tune's reporter. Its new output engine prints its
    # "Configuration for experiment" box, results path and TensorBoard hint even at verbose=0
    # (ray/tune/tune.py calls experiment_started whenever that engine is on); the legacy engine at
    # verbose=0 prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not sys.stdout.isatty():  # no colour codes around "(RayTrainWorker pid=…)" in logs and pipes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    # Ray 2.60 turns token authentication on for a new local cluster (and for one found by
    # auto) and says so at every start, a warning that asks nothing of the user. Setting
    # RAY_AUTH_MODE here would not do: Ray reads it when imported. Authentication stays as
    # Ray chooses; errors from that module still show.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=True)
    if target and target != "local":
        check_ray_address(target, origin)
        if not submitted_job():
            # A remote cluster's workers may not have our package installed: ship it. (A job sent
            # by `palimpsest submit` ships it in the job's runtime_env, which Ray would refuse to
            # merge with a second py_modules here.)
            import palimpsest
            import palimpsest_envs

            kwargs["runtime_env"] = {
                "env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
                "py_modules": [str(Path(palimpsest.__file__).parent), str(Path(palimpsest_envs.__file__).parent)]
            }
        try:
            ray.init(address=target, **kwargs)
        except Exception as error:  # version mismatch, auth, a cluster going away meanwhile
            ray.shutdown()
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RayUnavailable(f"cannot join Ray at {target} (from {origin}): {first}") from None
    else:
        _start_local_ray(ray, kwargs)
    _drop_ray_noise()
    _drop_tune_resume_hint()
    return ray


def _start_local_ray(ray, kwargs: dict) -> None:
    # Train's preemption watcher polls for node drains; one local node is never drained,
    # and the watcher's actor logs a core-worker warning at every fit.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # The dashboard also serves the state API that Ray Train's placement-group cleaner
    # polls; without it the cleaner warns every second.
    kwargs = dict(kwargs, address="local", include_dashboard=True)
    # That cleaner finds its cluster through $RAY_ADDRESS, else by looking for GCS
    # processes on the machine, and dies with a traceback when it finds several (another
    # run, a test session). Give the workers our GCS address: choose the GCS port here.
    port = os.environ.get("RAY_GCS_SERVER_PORT") or str(_free_port())
    try:
        from ray._private.services import get_node_ip_address

        gcs_address = _join(get_node_ip_address(), int(port))
    except Exception:  # noqa: BLE001 - an optional nicety; Ray starts without it
        gcs_address = None
    if gcs_address:
        saved = os.environ.get("RAY_GCS_SERVER_PORT")
        os.environ["RAY_GCS_SERVER_PORT"] = port
        try:
            ray.init(runtime_env={"env_vars": {"RAY_ADDRESS": gcs_address}}, **kwargs)
            return
        except Exception:  # the port was taken meanwhile: start as Ray chooses
            ray.shutdown()
        finally:
            if saved is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = saved
    ray.init(**kwargs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


# Lines Ray's own processes print that say nothing a user can act on; dropped from the
# worker output Ray forwards to this terminal (log_to_driver). Our "[palimpsest]" lines,
# tracebacks and every other warning pass.
_RAY_NOISE = (
    # Train's preemption watcher on a cluster: a core-worker note about its own restart policy.
    re.compile(r"core_worker\.cc:\d+: Actor with class name: '\w+' and ID: '\w+' has constructor arguments in the "
               r"object store and max_restarts > 0"),
)


def _drop_ray_noise() -> None:
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    with dispatcher._lock:
        handlers = list(dispatcher.handlers)
    for name, handler in handlers:
        if name != "ray_print_logs" or getattr(handler, "_palimpsest_filtered", False):
            continue

        def filtered(data, _handler=handler):
            lines = [line for line in data.get("lines", []) if not any(p.search(line) for p in _RAY_NOISE)]
            if lines:
                _handler({**data, "lines": lines})

        filtered._palimpsest_filtered = True
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, filtered)


class _NotTuneResumeHint(logging.Filter):
    """Ray Tune's own "Resume experiment with: Tuner.restore(...)" after an interrupt: the CLI prints ours
    (`palimpsest tune --resume FOLDER`), which is the one that works with our folders."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "most recent state was saved" not in message


def _drop_tune_resume_hint() -> None:
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NotTuneResumeHint) for f in tune_logger.filters):
        tune_logger.addFilter(_NotTuneResumeHint())
