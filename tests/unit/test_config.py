"""The settings: available_cpus (the CPU affinity capped by a cgroup quota), and the values
refused when they load (one line each from the CLI), not when they break a running service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.config import Settings, available_cpus

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(root: Path, files: dict[str, str]) -> Path:
    """A stand-in for /sys/fs/cgroup holding `files` (relative path -> content)."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    ({}, AFFINITY),  # no cgroup files at all
    ({"cpu.max": "max 100000\n"}, AFFINITY),  # v2 without a limit
    ({"cpu.max": "100000 100000\n"}, 1),
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still needs one thread
    ({"cpu.max": "150000 100000\n"}, min(AFFINITY, 2)),  # 1.5 CPUs: rounded up
    ({"cpu.max": "6400000 100000\n"}, min(AFFINITY, 64)),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),  # v1
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     1),
    ({"cpu.max": "garbage\n"}, AFFINITY),  # unreadable: no limit assumed
])
def test_available_cpus_takes_the_cgroup_quota_into_account(tmp_path, files, expected):
    assert available_cpus(cgroup(tmp_path, files)) == expected


def test_available_cpus_never_exceeds_the_affinity(tmp_path):
    root = cgroup(tmp_path, {"cpu.max": f"{(AFFINITY + 8) * 100000} 100000\n"})
    assert available_cpus(root) == AFFINITY


def test_onnxruntime_threads_default_to_the_available_cpus(monkeypatch):
    monkeypatch.delenv("STOCKCAST_ORT_INTRA_OP_THREADS", raising=False)
    assert Settings(_env_file=None).ort_intra_op_threads == available_cpus()


@pytest.fixture
def env(monkeypatch):
    """Settings from this environment alone: no STOCKCAST_* variable, no .env; set(name, value)."""
    from service.core.config import get_settings

    for name in [n for n in os.environ if n.startswith("STOCKCAST_")]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield lambda name, value: monkeypatch.setenv(f"STOCKCAST_{name}", value)
    get_settings.cache_clear()


def test_the_defaults_load_as_documented(env):
    settings = Settings(_env_file=None)
    assert (settings.source, settings.log_level, settings.model_check_interval_seconds,
            settings.db_statement_timeout_seconds, settings.db_retry_seconds) == (
        "yfinance", "INFO", 2.0, 2.0, 1.0)


@pytest.mark.parametrize(("name", "value", "loaded"), [
    ("LOG_LEVEL", "debug", "DEBUG"),
    ("LOG_LEVEL", "Warning", "WARNING"),
    ("SOURCE", "none", "none"),
    ("MODEL_CHECK_INTERVAL_SECONDS", "0", 0.0),  # no check
    ("MODEL_CHECK_INTERVAL_SECONDS", "0.1", 0.1),
    ("MODEL_CHECK_INTERVAL_SECONDS", "3600", 3600.0),
    ("DB_STATEMENT_TIMEOUT_SECONDS", "60", 60.0),
    ("ORT_INTRA_OP_THREADS", "1", 1),
    ("REFRESH_INTERVAL_MINUTES", "1e6", 1e6),  # the tests' "never again"
    ("FORECAST_THREADS", "40", 40),
    ("FORECAST_CACHE_SIZE", "100000", 100_000),
    ("MAX_BODY_BYTES", str(64 * 1024 * 1024), 64 * 1024 * 1024),
])
def test_values_in_range_load(env, name, value, loaded):
    env(name, value)
    assert getattr(Settings(_env_file=None), name.lower()) == loaded


@pytest.mark.parametrize(("name", "value"), [
    ("LOG_LEVEL", "verbose"),  # logging.basicConfig raised "Unknown level"
    ("LOG_LEVEL", ""),
    ("LOG_LEVEL", "warn"),  # logging's alias, not uvicorn's
    ("SOURCE", "bogus"),  # serve failed in its lifespan: "unknown bar source"
    ("ORT_PROVIDER", "gpu"),
    ("FORECAST_THREADS", "abc"),
    ("DB_RETRY_SECONDS", "-1"),
    ("DB_RETRY_SECONDS", "inf"),  # one failure would refuse the database for good
    ("MODEL_CHECK_INTERVAL_SECONDS", "inf"),  # killed the model-watch thread (OverflowError)
    ("MODEL_CHECK_INTERVAL_SECONDS", "nan"),
    ("MODEL_CHECK_INTERVAL_SECONDS", "1e400"),  # parsed as inf
    ("MODEL_CHECK_INTERVAL_SECONDS", "1e-9"),  # ~40 % of a core, idle
    ("MODEL_CHECK_INTERVAL_SECONDS", "3601"),
    ("DB_STATEMENT_TIMEOUT_SECONDS", "inf"),  # killed serve: int(inf * 1000)
    ("DB_STATEMENT_TIMEOUT_SECONDS", "61"),
    ("DB_PING_TIMEOUT_SECONDS", "inf"),  # undid the 503 within 3 s
    ("DB_POOL_TIMEOUT_SECONDS", "inf"),
    ("DB_CONNECT_TIMEOUT_SECONDS", "61"),
    ("FORECAST_WAIT_SECONDS", "inf"),
    ("BATCH_DEADLINE_SECONDS", "nan"),  # never past it: 0 says unbounded
    ("BAR_CHECK_TTL_SECONDS", "inf"),
    ("REFRESH_INTERVAL_MINUTES", "1e300"),  # past what a timedelta holds
    ("SOURCE_COOLDOWN_SECONDS", "inf"),
    ("SCHEMA_CHECK_INTERVAL_SECONDS", "inf"),
    ("ORT_INTRA_OP_THREADS", "0"),  # was clamped to 1 without a word
    ("ORT_INTRA_OP_THREADS", "-3"),
    # No upper bound before (found by a hostile ops pass): a lane wider than the pool it
    # stands in for, a cache that never evicts, a body of any size read whole into memory.
    ("FORECAST_THREADS", "41"),
    ("FORECAST_THREADS", "1000000"),
    ("FORECAST_CACHE_SIZE", "100001"),
    ("FORECAST_CACHE_SIZE", "1000000000000"),
    ("MAX_BODY_BYTES", str(64 * 1024 * 1024 + 1)),
    ("MAX_BODY_BYTES", str(2**40)),  # a TiB
])
def test_a_value_that_would_break_the_service_is_refused_naming_its_setting(env, name, value):
    env(name, value)
    with pytest.raises(ValidationError) as err:
        Settings(_env_file=None)
    assert [e["loc"] for e in err.value.errors()] == [(name.lower(),)]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("DB_RETRY_SECONDS", "-1",
     "error: STOCKCAST_DB_RETRY_SECONDS: Input should be greater than or equal to 0"),
    ("LOG_LEVEL", "verbose",
     "error: STOCKCAST_LOG_LEVEL: Input should be 'CRITICAL', 'ERROR', 'WARNING', 'INFO' or 'DEBUG'"),
    ("MODEL_CHECK_INTERVAL_SECONDS", "1e-9",
     "error: STOCKCAST_MODEL_CHECK_INTERVAL_SECONDS: Value error, 0 (no check) or at least 0.1 s"),
    ("DB_STATEMENT_TIMEOUT_SECONDS", "inf",
     "error: STOCKCAST_DB_STATEMENT_TIMEOUT_SECONDS: Input should be a finite number"),
    ("FORECAST_THREADS", "1000",
     "error: STOCKCAST_FORECAST_THREADS: Input should be less than or equal to 40"),
    ("FORECAST_CACHE_SIZE", "1000000000",
     "error: STOCKCAST_FORECAST_CACHE_SIZE: Input should be less than or equal to 100000"),
    ("MAX_BODY_BYTES", "1073741824",
     "error: STOCKCAST_MAX_BODY_BYTES: Input should be less than or equal to 67108864"),
])
@pytest.mark.parametrize("args", [["tickers"], ["serve"]])
def test_a_command_with_a_bad_setting_says_which_in_one_line(env, monkeypatch, args, name,
                                                             value, message):
    """Every command, serve before uvicorn starts: one line, exit 1 (as for a database URL
    that is none), where each was a traceback (found by a hostile ops pass)."""
    import uvicorn
    from typer.testing import CliRunner

    from service.cli import app

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("uvicorn started"))
    env(name, value)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output == message + "\n"


def test_every_bad_setting_is_a_line_of_its_own(env):
    from typer.testing import CliRunner

    from service.cli import app

    env("SOURCE", "bogus")
    env("ORT_INTRA_OP_THREADS", "0")
    result = CliRunner().invoke(app, ["tickers"])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines() == [
        "error: STOCKCAST_SOURCE: Input should be 'yfinance' or 'none'",
        "error: STOCKCAST_ORT_INTRA_OP_THREADS: Input should be greater than or equal to 1"]


def test_a_bad_log_level_option_is_one_line(env):
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(app, ["--log-level", "verbose", "tickers"])
    assert result.exit_code == 1, result.output
    assert result.output == ("error: --log-level 'verbose': use one of CRITICAL, ERROR, WARNING, "
                             "INFO, DEBUG\n")


@pytest.mark.parametrize("args", [["tickers", "--help"], ["serve", "--help"],
                                  ["db", "upgrade", "--help"], ["db", "--help"], ["db"],
                                  ["--log-level", "debug", "ingest", "--help"]])
def test_help_is_answered_whatever_the_environment(env, args):
    """`STOCKCAST_X=bad stockcast tickers --help` printed the settings error, not the help
    (found by a hostile ops pass): the app's callback checked them before the command read
    its --help. Now the help is the one a good environment gets; a command still fails."""
    from typer.testing import CliRunner

    from service.cli import app

    good = CliRunner().invoke(app, args)
    env("DB_RETRY_SECONDS", "-1")
    env("SOURCE", "bogus")
    bad = CliRunner().invoke(app, args)
    assert "Usage: " in good.output and good.exit_code in (0, 2)  # 2: a group given no command
    assert (bad.exit_code, bad.output) == (good.exit_code, good.output)
    run = CliRunner().invoke(app, ["tickers"])
    assert run.exit_code == 1 and run.output.startswith(
        "error: STOCKCAST_SOURCE: Input should be 'yfinance' or 'none'\n"), run.output


@pytest.mark.parametrize(("env_vars", "said"), [
    ({"STOCKCAST_DB_RETRY_SECONDS": "-1"},
     ["error: STOCKCAST_DB_RETRY_SECONDS: Input should be greater than or equal to 0"]),
    ({"STOCKCAST_SOURCE": "bogus", "STOCKCAST_FORECAST_THREADS": "1000"},
     ["error: STOCKCAST_SOURCE: Input should be 'yfinance' or 'none'",
      "error: STOCKCAST_FORECAST_THREADS: Input should be less than or equal to 40"]),
])
def test_the_app_factory_under_uvicorn_with_a_bad_setting_says_which_and_exits_1(
        tmp_path, env_vars, said):
    """`uvicorn --factory service.api.main:create_app` (no CLI) with a bad setting printed
    pydantic's traceback, 50 lines through uvicorn's loader (found by a hostile ops pass); now
    the lines the CLI prints, alone on stderr, and exit 1, before any socket is bound."""
    import subprocess
    import sys

    from service.core.config import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKCAST_")}
    env.update(env_vars, PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(  # in tmp_path: no .env
        [sys.executable, "-m", "uvicorn", "--factory", "service.api.main:create_app",
         "--host", "127.0.0.1", "--port", "0"],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr.splitlines()) == (1, "", said)
