"""The ``dlaas`` command.

Flags are generated from the Settings fields, so every flag has its environment twin
(``--idle-timeout-s`` is ``DLAAS_IDLE_TIMEOUT_S``) and help text cannot drift.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from typing import Any

from dlaas import __version__
from dlaas.errors import DlaasError
from dlaas.settings import GROUPS, Settings, load_settings


def _add_settings_flags(parser: argparse.ArgumentParser, groups: Sequence[str]) -> None:
    fields = Settings.model_fields
    for group_name in groups:
        group = parser.add_argument_group(group_name)
        for name in GROUPS[group_name]:
            info = fields[name]
            flag = "--" + name.replace("_", "-")
            kwargs: dict[str, Any] = {"dest": name, "default": None, "metavar": name.upper()}
            choices = _literal_choices(info.annotation)
            if choices:
                kwargs["choices"] = choices
                kwargs.pop("metavar")
            default = info.get_default(call_default_factory=True)
            shown = "" if default is None else f" (default: {default})"
            kwargs["help"] = f"{info.description}{shown} [env DLAAS_{name.upper()}]"
            group.add_argument(flag, **kwargs)


def _literal_choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(a) for a in typing.get_args(annotation)]
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlaas", description="Image classification as a service that scales with demand."
    )
    parser.add_argument("--version", action="version", version=f"dlaas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the web tier, the autoscaler and local workers")
    _add_settings_flags(serve, list(GROUPS))

    worker = sub.add_parser("worker", help="run one worker (the app tier)")
    _add_settings_flags(worker, ["storage and queue", "model", "worker"])

    controller = sub.add_parser(
        "controller", help="run the autoscaler alone (the web tier runs elsewhere)"
    )
    _add_settings_flags(
        controller, ["storage and queue", "model", "worker", "scaling", "AWS launchers"]
    )

    classify = sub.add_parser("classify", help="upload images or folders to a running service")
    classify.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    classify.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    classify.add_argument(
        "--output", default=None, help="write results to a .csv or .json file instead of a table"
    )
    classify.add_argument(
        "--timeout-s", type=float, default=600.0, help="give up waiting after this long"
    )

    model = sub.add_parser("model", help="prepare the model")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    build = model_sub.add_parser("build", help="convert EfficientNet-Lite0 to ONNX (no torch)")
    _add_settings_flags(build, ["storage and queue", "model"])
    build.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")

    sub.add_parser("simulate", help="simulate autoscaling at cloud scale", add_help=False)
    aws = sub.add_parser("aws", help="AWS helpers")
    aws_sub = aws.add_subparsers(dest="aws_command", required=True, metavar="ACTION")
    aws_sub.add_parser(
        "user-data", help="print the worker instances' user-data script", add_help=False
    )
    return parser


def _settings_from(args: argparse.Namespace) -> Settings:
    names = Settings.model_fields.keys()
    return load_settings(**{k: v for k, v in vars(args).items() if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands with their own parsers get the rest of the line untouched.
    if argv[:1] == ["simulate"]:
        from dlaas.scaling.simulate import main as simulate_main

        return simulate_main(argv[1:])
    if argv[:2] == ["aws", "user-data"]:
        from dlaas.aws.userdata import main as user_data_main

        return user_data_main(argv[2:])

    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except DlaasError as exc:
        print(f"dlaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from dlaas.logs import configure_logging

    if args.command == "classify":
        from dlaas.client import run_classify

        return run_classify(args.paths, url=args.url, output=args.output, timeout_s=args.timeout_s)

    settings = _settings_from(args)
    configure_logging(settings.log_level)
    if args.command == "serve":
        from dlaas.serve import run_serve

        return run_serve(settings)
    if args.command == "worker":
        from dlaas.worker.entry import run as run_worker

        return run_worker(settings)
    if args.command == "controller":
        from dlaas.serve import run_controller

        return run_controller(settings)
    if args.command == "model":
        from dlaas.components import model_spec_from

        if args.force:
            from dlaas.model import ensure_model

            spec = ensure_model(settings.model_cache_dir, force=True)
        else:
            spec = model_spec_from(settings)
        print(f"model {spec.name} ready at {spec.onnx_path}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")
