"""`python -m mhtrain.study run CONFIG [options] [overrides]`: run any conf/study/<CONFIG>.yaml.
`python -m mhtrain.study export STUDY`: write the best trial as conf/experiment/best_<STUDY>.yaml
(and hand over its checkpoint, if the study kept one).
`python -m mhtrain.study dashboard`: optuna-dashboard for a storage, with its checkpoints."""

import argparse
import os
import sys
from pathlib import Path

from mhtrain import CONF_DIR, one_line_errors
from mhtrain.study.storage import DEFAULT_STORAGE, artifact_dir, check_storage

# the study modules import torch and Lightning (seconds): `dashboard` needs none of them


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-"):
        from mhtrain.study import cli

        return cli.main(argv[1], f"Study conf/study/{argv[1]}.yaml.", argv[2:],
                        prog=f"python -m mhtrain.study run {argv[1]}")
    parser = argparse.ArgumentParser(prog="python -m mhtrain.study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    configs = sorted(p.stem for p in (CONF_DIR / "study").glob("*.yaml"))
    run = sub.add_parser("run", help="run a study config: run CONFIG --help for its options",
                         description="Run a conf/study/<CONFIG>.yaml; `run CONFIG --help` lists its "
                                     "options (trials, storage, workers, --confirm, ...).")
    run.add_argument("config", choices=configs, metavar="CONFIG", help=f"one of: {', '.join(configs)}")
    ex = sub.add_parser("export", help="write conf/experiment/best_<study>.yaml from the best trial")
    ex.add_argument("study", help="study name in the storage")
    ex.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    ex.add_argument("--as-searched", action="store_true",
                    help="keep the search's fidelity (epochs, subsets) and the trial's seed; by "
                         "default the export trains at the experiment's own")
    ex.add_argument("--config", metavar="CONFIG",
                    help="the conf/study/<CONFIG>.yaml the study was run with (default: the study's "
                         "name): only its searched keys, with values inside its space, are read back")
    ex.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="the fixed overrides the study ran with that the export should keep, e.g. "
                         "data.data_dir=… (a storage's own are not taken)")
    dash = sub.add_parser("dashboard", help="optuna-dashboard for a storage, listing kept checkpoints")
    dash.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    dash.add_argument("--port", type=int, default=8080, help="port to serve on (default 8080)")
    dash.add_argument("--host", default="127.0.0.1",
                      help="address to serve on (default 127.0.0.1, this machine only; 0.0.0.0 "
                           "shows the dashboard to anyone who can reach this machine)")
    args, rest = parser.parse_known_args(argv)  # export's overrides may follow its options
    if args.command != "export" or any(a.startswith("-") or "=" not in a for a in rest):
        args = parser.parse_args(argv)  # says what it does not know, as ever
    else:
        args.overrides = [*args.overrides, *rest]
    if args.command == "dashboard":
        return one_line_errors(lambda: dashboard(args.storage, args.port, args.host))

    def run() -> int:
        from mhtrain import ConfigError
        from mhtrain.study import local, records, study_config
        from mhtrain.study.export import export, export_checkpoint, handover_lines

        records.study_name(args.study, "study name")
        config = args.config or args.study.split("@", 1)[0]
        if args.config is not None or args.overrides:  # the local config its records are read against
            if not local.NAME.fullmatch(config):
                raise ConfigError(f"--config {records.shown(config)}: name a conf/study/*.yaml, e.g. lr")
            local.trust(study_config.load(config, name=args.study, extra_overrides=args.overrides),
                            f"conf/study/{config}.yaml with the command line")
        path, dropped = export(args.study, args.storage, as_searched=args.as_searched)
        try:
            ckpt = export_checkpoint(args.study, args.storage, Path("runs") / f"best_{args.study}.ckpt")
        except ConfigError:
            path.unlink(missing_ok=True)  # a refused export leaves nothing behind
            raise
        print("\n".join(handover_lines(args.study, args.storage, path, dropped, ckpt)))
        return 0

    return one_line_errors(run)


def dashboard(storage: str, port: int, host: str = "127.0.0.1") -> int:
    """Serve the storage with its artifact folder, so checkpoints are listed."""
    check_storage(storage, must_exist=True)
    exe = Path(sys.executable).with_name("optuna-dashboard")
    folder = artifact_dir(storage)
    os.execv(exe, [str(exe), storage, "--host", host, "--port", str(port),
                   *(["--artifact-dir", str(folder)] if folder.is_dir() else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
