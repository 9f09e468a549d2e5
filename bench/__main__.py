"""``python -m bench [--quick]``: run the benchmarks and write the report.

Exit status: 0 when the run completed (1 with ``--fail-on-miss`` when a
target was missed), 2 when a tool or Redis is missing, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import configs, report
from bench.procs import signals_as_interrupts
from bench.runner import RESULTS_DIR, Options, SetupError, run

# mode: (duration s, rounds, warm-up s, keys in the miss pool, quiet wait s,
# pause between runs s). Quick mode must stay under two minutes in all.
MODES = {
    "full": (6.0, 4, 2.0, 1000, 60.0, 0.3),
    "quick": (2.0, 2, 0.5, 300, 5.0, 0.2),
}


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in configs.NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown configuration '{unknown[0]}'; known: {', '.join(configs.NAMES)}"
        )
    return names


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("RPA_GATEWAY_"):
        raise argparse.ArgumentTypeError(f"'{text}' is not RPA_GATEWAY_NAME=value")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the gateway against nginx and a plain Python proxy.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs: under 2 minutes in all"
    )
    parser.add_argument("--duration", type=float, help="seconds per load run")
    parser.add_argument("--rounds", type=int, help="rounds, at least 2")
    parser.add_argument(
        "--only",
        type=_names,
        default=configs.NAMES,
        metavar="NAME,...",
        help="run only these configurations",
    )
    parser.add_argument(
        "--profile",
        type=_names,
        default=(),
        metavar="NAME,...",
        help="after the rounds, profile these configurations with py-spy",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        metavar="S",
        help="most seconds to wait, over the run, for a quieter machine "
        "(60 full, 5 quick)",
    )
    parser.add_argument(
        "--no-extras",
        action="store_true",
        help="skip verifications per second, revocation and memory",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL"),
        help="a Redis to use instead of the run's own redis-server on the "
        "load CPUs; the run works in a namespace of its own",
    )
    parser.add_argument(
        "--gateway-setting",
        type=_setting,
        action="append",
        default=[],
        metavar="RPA_GATEWAY_NAME=VALUE",
        help="an extra setting for every gateway process (repeatable)",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=RESULTS_DIR, help="where to write"
    )
    parser.add_argument(
        "--keep-run-dir", action="store_true", help="keep the logs of the run"
    )
    parser.add_argument(
        "--fail-on-miss", action="store_true", help="exit 1 if a target is missed"
    )
    return parser


def options_from(args: argparse.Namespace) -> Options:
    mode = "quick" if args.quick else "full"
    duration, rounds, warmup, miss_keys, quiet, pause = MODES[mode]
    rounds = args.rounds or rounds
    if rounds < 2:
        raise SetupError("--rounds must be at least 2: one round cannot show drift.")
    return Options(
        mode=mode,
        duration=args.duration or duration,
        rounds=rounds,
        warmup=warmup,
        connections=(32, 128),
        names=args.only,
        redis_url=args.redis_url,
        miss_keys=miss_keys,
        revocations=200,
        cached_keys=100_000,
        verify_seconds=1.0 if args.quick else 2.0,
        endpoint_seconds=1.0 if args.quick else 1.5,
        extras=not args.no_extras,
        output_dir=args.output_dir,
        keep_run_dir=args.keep_run_dir,
        gateway_env=dict(args.gateway_setting),
        profile=args.profile,
        quiet_budget=quiet if args.quiet_wait is None else args.quiet_wait,
        pause=pause,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from(args)
        with signals_as_interrupts():
            result = run(options)
    except SetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # StartError, PreflightError, WrkError: the message says it all.
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything started was stopped.", file=sys.stderr)
        return 130
    report.write(result, options.output_dir)
    print(report.markdown(result))
    print(f"Wrote {options.output_dir / 'latest.json'} and latest.md.")
    missed = [n for n, t in result["targets"].items() if t["met"] is False]
    return 1 if missed and args.fail_on_miss else 0


if __name__ == "__main__":
    sys.exit(main())
