"""`relaion`: generate demo data, hash downloaded images, run the whole job, verify a release.

`relaion run` goes through the Dagster definitions in `assets/`, so a run from the terminal and a run from the
UI are the same runs, in the same instance. The library does not import them: the Dagster layer provides the
runner as the entry point `relaion_pipeline.runners: dagster` (pyproject.toml), found when `run` starts.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shlex
import sys
import traceback
from dataclasses import fields
from importlib import metadata
from pathlib import Path

from relaion_pipeline.core import interrupts, progress
from relaion_pipeline.core.settings import Settings, parse


def _demo_data(args) -> int:
    from relaion_pipeline.demo_data import demo

    planted = demo.generate(args.out, shards=args.shards, rows=args.rows, seed=args.seed)
    shard_count = len([k for k in planted if not k.startswith("_")])
    print(f"wrote {shard_count} shards of {args.rows:,} rows, sidecars and partner lists under {args.out}")
    print(f"  shards:     {args.out}/shards\n  blocklists: {args.out}/blocklists\n  sidecars:   {args.out}/sidecars")
    return 0


def _settings(args) -> Settings:
    """The environment's `RELAION_*` settings, overridden by the flags given."""
    return Settings.from_env(**{f.name: getattr(args, f.name, None) for f in fields(Settings)})


def _flag_type(flag: str, setting: str, kind: type):
    """argparse's `type` for a setting's flag: parsed and checked like its variable, the error naming the flag."""

    def convert(raw: str):
        try:
            return parse(flag, kind, raw, setting)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).removeprefix(f"{flag}=")) from None

    return convert


def _setting_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] = ()) -> None:
    """A flag for every setting (or the settings `only`), each named with its `RELAION_*` variable and default.

    Why argparse and not click/typer's `envvar=`: the flags are generated from the one declaration of the
    settings (`Settings` fields and their help), which the Dagster resource and `Settings.from_env` also read,
    and one parser (`settings.parse`) checks a value whether it came from a flag, a variable or the UI, its error
    naming that flag or variable. A library's own env-var layer would be a second parser to keep equal."""
    base = Settings()
    for f in fields(Settings):
        if only and f.name not in only:
            continue
        flag, variable = "--" + f.name.replace("_", "-"), f"RELAION_{f.name.upper()}"
        default = getattr(base, f.name)
        text = f"{f.metadata['help']} [{variable}; default: {default if default != '' else 'none'}]".replace("%", "%%")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action="store_const", const=True, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(),
                                type=_flag_type(flag, f.name, type(f.default)), help=text)  # fmt: skip


RUNNERS = "relaion_pipeline.runners"  # the entry point group a layer that runs the stages registers in


def _runner():
    """`run_all(settings, progress, force, debug)` of the layer that runs the stages (Dagster's: `assets.runner`)."""
    found = {point.name: point for point in metadata.entry_points(group=RUNNERS)}
    if "dagster" not in found:
        raise SystemExit(
            f"error: no runner is installed (entry point group {RUNNERS!r} has no 'dagster'): install the project"
            " with its Dagster layer (make install, or pip install -e .)"
        )
    return found["dagster"].load()


class _Lines(logging.Handler):
    """The progress of long work inside a stage (`core.progress`), a line each, indented under its shard."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"      {record.getMessage()}", flush=True)


def _run(args) -> int:
    run_all = _runner()
    settings = _settings(args)
    with progress.to(_Lines(), settings.progress_seconds):  # each asset sets the interval for its own work too
        summary = run_all(settings, progress=lambda line: print(line, flush=True), force=args.force, debug=args.debug)
    if summary.error:
        print(f"error: {summary.error}", file=sys.stderr)
    if summary.shards:
        header = f"{'shard':<32} {'rows in':>12} {'removed':>9} {'research':>12} {'safe':>12}  status"
        print("\n" + header + "\n" + "-" * len(header))
        for s in summary.shards:
            status = "ok" if s.ok else f"FAILED: {s.error}"
            print(
                f"{s.name:<32} {s.rows_in:>12,} {s.rows_removed:>9,} {s.rows_research:>12,} {s.rows_safe:>12,}  {status}"
            )
    if summary.release:
        r = summary.release
        print(
            f"\nrelease {r['version']}: {r['shards']} shards published, {r['held_back']} held back,"
            f" {r['rows_research']:,} research rows, {r['rows_research_safe']:,} research-safe rows"
        )
        for name, why in (r.get("held_back_shards") or {}).items():
            print(f"  held back: {name}: {why}")
        for name, why in (r.get("left_shards") or {}).items():
            print(f"  left:      {name}: {why}")
        print(f"  manifest: {r['path']}/manifest.json")
        print(f"  verify:   relaion verify {r['path']}")
    dagster = Path(sys.executable).parent / "dagster"  # works as printed, the virtual environment active or not
    home = shlex.quote(str(Path(settings.dagster_home).resolve()))
    print(f"  UI:       DAGSTER_HOME={home} {shlex.quote(str(dagster))} dev   (then http://127.0.0.1:3000)")
    return 0 if summary.ok else 1


def _verify(args) -> int:
    from relaion_pipeline.publishing import verification

    manifest, problems = verification.verify(args.release, args.blocklists)
    for problem in problems:
        print(f"MISMATCH {problem}")
    shards = manifest.get("shards", {})
    if problems:
        print(f"release {manifest.get('version')}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    files = sum(len(entry.get("files", {})) for entry in shards.values())
    checked = "version, checksums, row counts, research-safe within research and its threshold" + (
        ", no list match" if args.blocklists else ""
    )
    print(
        f"release {manifest.get('version')}: OK ({len(shards)} shards, {files} files; {checked}); checked {manifest['path']}"
    )
    return 0


def _clean(args) -> int:
    from relaion_pipeline.publishing import clean

    try:
        result = clean.clean(args.release, args.input, args.output, by=args.by, variant=args.variant,
                             progress=lambda line: print(line, flush=True))  # fmt: skip
    except clean.UnverifiedRelease as error:  # a failed check, not a mistake in the command
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"cleaned {len(result['shards'])} shards: {result['rows_removed']:,} of {result['rows_in']:,} rows removed"
        f" (report: {args.output}/clean-report.json)"
    )
    return 0


def _prepare(args) -> int:
    from relaion_pipeline import prepare

    prepare.prepare(progress=lambda line: print(line, flush=True))
    return 0


def _hash_images(args) -> int:
    from relaion_pipeline.match import images

    settings = _settings(args)
    progress = functools.partial(print, flush=True)
    images.check_out(args.out, settings.shards, args.images)
    results = images.hash_tars(args.images, args.out, workers=args.tar_workers, progress=progress)
    written = images.write_sidecars(settings, args.out, progress=progress)
    failed = [r for r in results if r.error]
    totals = {k: sum(getattr(r, k) for r in results) for k in ("images", "corrupt", "failed_downloads", "without_url")}
    print(
        f"{totals['images']:,} images hashed ({totals['corrupt']:,} corrupt: byte hashes only,"
        f" {totals['failed_downloads']:,} failed downloads, {totals['without_url']:,} without url);"
        f" {len(written)} sidecars, {sum(written.values()):,} rows under {args.out}"
    )
    for result in failed:
        print(f"error: {result.error}", file=sys.stderr)
    return 1 if failed else 0


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where it is None: those flags name their real default themselves."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relaion", description=__doc__.splitlines()[0], allow_abbrev=False)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    top.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = top.add_subparsers(dest="command", required=True)
    defaults = _Defaults
    add_parser = functools.partial(commands.add_parser, parents=[common], allow_abbrev=False)

    def subcommand(*args, **kwargs) -> argparse.ArgumentParser:  # no abbreviated flags; its own usage on errors
        command = add_parser(*args, **kwargs)
        command.set_defaults(usage=command)
        return command

    commands.add_parser = subcommand

    demo = commands.add_parser(
        "demo-data", help="write synthetic LAION-like shards and partner lists", formatter_class=defaults
    )
    demo.add_argument("--out", required=True, help="folder to create (shards/, blocklists/, sidecars/)")
    demo.add_argument("--shards", type=int, default=4, help="number of shards")
    demo.add_argument("--rows", type=int, default=5000, help="rows per shard")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.set_defaults(handler=_demo_data)

    ready = commands.add_parser(
        "prepare", help="compile the matching kernels once, before the first run (make install does)"
    )
    ready.set_defaults(handler=_prepare)

    run = commands.add_parser(
        "run", help="rebuild the blocklist, run every shard not up to date, then publish", formatter_class=defaults
    )
    _setting_flags(run)
    run.add_argument(
        "--force", action="store_true", help="re-run every shard, also those up to date for the current lists"
    )
    run.set_defaults(handler=_run)

    hashing = commands.add_parser(
        "hash-images",
        help="md5, sha1, sha256 and PDQ of downloaded images (img2dataset output) as per-shard sidecars",
        formatter_class=defaults,
    )
    hashing.add_argument("--images", required=True, help="img2dataset output: webdataset .tar files (+ .parquet)")
    hashing.add_argument(
        "--out", required=True, help="where the sidecars go (<out>/<shard>.parquet): the sidecars location"
    )
    _setting_flags(hashing, only=("shards",))
    hashing.add_argument(
        "--workers", dest="tar_workers", type=int, default=0,
        help="processes hashing tars at once (0: one per CPU the process may use)",
    )  # fmt: skip
    hashing.set_defaults(handler=_hash_images)

    clean = commands.add_parser(
        "clean", help="clean an old copy of the dataset with a release", formatter_class=defaults
    )
    clean.add_argument("--release", required=True, help="a release folder or location (local or s3://)")
    clean.add_argument("--input", required=True, help="the old copy: a folder of parquet shards")
    clean.add_argument("--output", required=True, help="where the cleaned copy goes (same relative paths)")
    clean.add_argument("--by", choices=["removal-list", "difference"], default="removal-list",
                       help="drop the rows the release's removal list names, or keep only rows the release holds")  # fmt: skip
    clean.add_argument("--variant", choices=["research", "research-safe"], default="research-safe",
                       help="with --by difference: which variant to compare with")  # fmt: skip
    clean.set_defaults(handler=_clean)

    verify = commands.add_parser("verify", help="recompute checksums and counts of a release", formatter_class=defaults)
    verify.add_argument("release", help="a release folder, or a release location holding a 'latest' pointer")
    verify.add_argument("--blocklists", default=None, help="also check that no published row matches these lists")
    verify.set_defaults(handler=_verify)
    return top


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 done, but checks failed, shards were held back or a release did not verify; 2 the
    command could not run (usage, settings, unreadable input or location); 130/143 SIGINT/SIGTERM."""
    top = parser()
    args, unknown = top.parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top-level one
        args.usage.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with interrupts.interruptible():
            return args.handler(args)
    except interrupts.Interrupted as interrupted:
        print("interrupted", file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one readable line; the traceback only on request
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
