"""The ``dlaas`` command.

Flags are generated from the Settings fields, so every flag has its environment twin
(``--idle-timeout-s`` is ``DLAAS_IDLE_TIMEOUT_S``) and help text cannot drift.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlaas import __version__
from dlaas.client_jobs import add_jobs_parser
from dlaas.errors import ConfigError, DlaasError
from dlaas.setting_groups import BUILTIN_MODELS, GROUPS
from dlaas.settings import Settings, load_settings


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
            if info.annotation is bool:  # `--keep-inputs` alone means true
                kwargs.update(nargs="?", const="true", metavar="BOOL")
            default = info.get_default(call_default_factory=True)
            if isinstance(default, tuple | list):
                default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
            shown = "" if default in (None, "") else f" (default: {default})"
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
        controller,
        ["storage and queue", "model", "worker", "scaling", "AWS launchers", "job lifecycle"],
    )

    _add_classify_parser(sub)
    _add_keys_parser(sub)
    add_jobs_parser(sub)
    _add_model_parser(sub)
    sub.add_parser("simulate", help="simulate autoscaling at cloud scale", add_help=False)
    aws = sub.add_parser("aws", help="AWS helpers")
    aws_sub = aws.add_subparsers(dest="aws_command", required=True, metavar="ACTION")
    aws_sub.add_parser(
        "user-data", help="print the worker instances' user-data script", add_help=False
    )
    return parser


def _add_classify_parser(sub: Any) -> None:
    classify = sub.add_parser(
        "classify",
        help="upload images or folders to a running service, or classify a bucket prefix or"
        " folder where it is (s3://bucket/prefix/ --output s3://bucket/out/)",
    )
    classify.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files or folders to upload; or one s3:// or file:// URL the service reads"
        " itself: a folder (ending in /) or a file of keys",
    )
    classify.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    classify.add_argument(
        "--output",
        default=None,
        help="write results to a .csv or .json file instead of a table; for a URL source, the"
        " folder URL where the service writes <job>.jsonl",
    )
    classify.add_argument(
        "--timeout-s", type=float, default=600.0, help="give up waiting after this long"
    )
    classify.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the job to its end (--no-wait: print the job ID and return)",
    )
    classify.add_argument(
        "--model", default=None, help="the model to use (GET /v1/models); default: the service's"
    )
    classify.add_argument(
        "--api-key",
        default=None,
        help="the key to send, when the service needs one [env DLAAS_API_KEY]",
    )


def _add_model_parser(sub: Any) -> None:
    model = sub.add_parser("model", help="prepare the model")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    build = model_sub.add_parser(
        "build",
        help="convert a built-in model to ONNX (no torch); --quantize int8 also builds the"
        " int8 model",
        description="Build the built-in model NAME (or the one --model names; default"
        " efficientnet-lite0) into its own folder of the model cache (--model-dir), unless a"
        " valid build is there. efficientnet-lite0-int8 (or --quantize int8) is the fp32"
        " model, then ONNX Runtime static quantization calibrated on --calibration-dir or the"
        " photos that ship with dlaas. Nothing is downloaded.",
    )
    build.add_argument(
        "name", nargs="?", default=None, choices=BUILTIN_MODELS, metavar="NAME",
        help=f"the built-in model to build: {', '.join(BUILTIN_MODELS)}",
    )  # fmt: skip
    _add_settings_flags(build, ["storage and queue", "model"])
    build.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="build the int8 model, efficientnet-lite0-int8 (same as --model"
        " efficientnet-lite0-int8)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
    _add_model_add_parser(model_sub)


def _add_model_add_parser(model_sub: Any) -> None:
    add = model_sub.add_parser(
        "add",
        help="add your own ONNX classifier to a model repository (--model-dir)",
        description="Check FILE as `dlaas serve --model FILE --labels L` would, then copy it"
        " into <model-dir>/NAME/<next version>/model.onnx with its labels and config.json.",
    )
    add.add_argument("name", metavar="NAME", help="the model's name in requests (?model=NAME)")
    add.add_argument("--onnx", required=True, type=Path, help="the ONNX classifier file")
    add.add_argument("--labels", required=True, type=Path, help="labels file, one per line")
    add.add_argument("--model-dir", type=Path, default=None, help="the repository (default"
                     " <data-dir>/models) [env DLAAS_MODEL_DIR]")  # fmt: skip
    add.add_argument("--data-dir", type=Path, default=None, help=argparse.SUPPRESS)
    add.add_argument("--version", type=int, default=None, help="version number (default next)")
    add.add_argument("--input-size", type=int, default=224, help="crop size")
    add.add_argument("--resize-size", type=int, default=256,
                     help="short side before the centre crop")  # fmt: skip
    add.add_argument("--mean", default="127,127,127", help="per-channel mean on 0..255")
    add.add_argument("--std", default="128,128,128", help="per-channel std on 0..255")
    add.add_argument("--layout", choices=["NCHW", "NHWC"], default="NCHW")
    add.add_argument("--max-batch-size", type=int, default=8, help="images per forward pass")
    add.add_argument("--version-policy", choices=["latest", "all"], default="latest",
                     help="serve the newest version only, or every version")  # fmt: skip


def _model_add(args: argparse.Namespace) -> int:
    from dlaas.model.repository import ModelConfig, add_model
    from dlaas.model.spec import Preprocessing

    preprocessing = Preprocessing(
        input_size=args.input_size,
        resize_size=args.resize_size,
        mean=_rgb(args.mean, "--mean"),
        std=_rgb(args.std, "--std"),
        layout=args.layout,
    )
    config = ModelConfig(preprocessing, max_batch_size=args.max_batch_size,
                         version_policy=args.version_policy)  # fmt: skip
    given = {k: v for k, v in (("model_dir", args.model_dir), ("data_dir", args.data_dir)) if v}
    root = load_settings(**given).model_cache_dir
    entry, version = add_model(root, args.name, args.onnx, args.labels, config, args.version)
    print(f"model {entry.name} version {version} added at {entry.onnx_path(version)}")
    return 0


def _rgb(text: str, flag: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes three numbers like 127,127,127, not {text!r}") from None
    return (a, b, c)


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

        return run_classify(
            args.paths,
            url=args.url,
            output=args.output,
            timeout_s=args.timeout_s,
            api_key=_api_key(args),
            wait=args.wait,
            model=args.model,
        )
    if args.command == "jobs":
        from dlaas.client_jobs import run_jobs

        return run_jobs(args, _api_key(args))
    if args.command == "keys":
        return _keys(args)
    if args.command == "model" and args.model_command == "add":
        return _model_add(args)

    settings = _settings_from(args)
    configure_logging(settings.log_level)
    if args.command == "serve":
        from dlaas.serve import run_serve

        return run_serve(settings)
    if args.command == "worker":
        from dlaas.assemble import run_worker

        return run_worker(settings)
    if args.command == "controller":
        from dlaas.serve import run_controller

        return run_controller(settings)
    if args.command == "model":
        from dlaas.assemble import model_spec_from

        name = _model_to_build(args.name, args.model, args.quantize, settings)
        if name is not None:
            settings = settings.model_copy(update={"model": name})
        spec = model_spec_from(settings, force=args.force)
        print(f"model {spec.name} ready at {spec.onnx_path}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _model_to_build(
    name: str | None, flag: str | None, quantize: str | None, settings: Settings
) -> str | None:
    """The built-in model ``dlaas model build`` was asked for; None leaves --model (or
    DLAAS_MODEL) as given. NAME wins over DLAAS_MODEL but must agree with --model."""
    if name is not None and flag is not None and flag != name:
        raise ConfigError(
            f"dlaas model build {name} --model {flag}: name the model once, as NAME or as --model"
        )
    if quantize != "int8":
        return name
    if name is None and settings.model_path is not None:
        raise ConfigError(
            f"--quantize int8 quantizes EfficientNet-Lite0, not {settings.model_path};"
            " leave out --model, or --quantize"
        )
    wanted = name or settings.model
    if wanted not in (None, "efficientnet-lite0", "efficientnet-lite0-int8"):
        raise ConfigError(
            f"--quantize int8 builds efficientnet-lite0-int8 only, not an int8 {wanted};"
            " leave out --quantize, or build efficientnet-lite0-int8"
        )
    return "efficientnet-lite0-int8"


def _api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, else ``DLAAS_API_KEY``: what a client sends as its bearer key."""
    from dlaas.client import ClientSettings

    given = {"api_key": args.api_key} if args.api_key else {}
    key = ClientSettings(**given).api_key
    return key.get_secret_value() if key is not None else None


def _add_keys_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage API keys (docs/security.md)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    add = keys_sub.add_parser("add", help="make a key for OWNER; prints it once")
    add.add_argument("owner", metavar="OWNER")
    add.add_argument("--role", choices=["user", "admin"], default="user")
    listing = keys_sub.add_parser("list", help="owners, roles and key counts (never a key)")
    revoke = keys_sub.add_parser("revoke", help="remove every key of OWNER")
    revoke.add_argument("owner", metavar="OWNER")
    for parser in (add, listing, revoke):
        parser.add_argument("--file", default=None, help="the keys file [env DLAAS_API_KEYS_FILE]")


def _keys(args: argparse.Namespace) -> int:
    from dlaas.keys import add_key, read_keys, revoke_owner

    path = load_settings(api_keys_file=args.file).api_keys_file
    if path is None:
        raise ConfigError("name the keys file: --file PATH, or DLAAS_API_KEYS_FILE")
    if args.keys_command == "add":
        key = add_key(path, args.owner, args.role)
        print(key)
        print(
            f"added a key ({args.role}) for {args.owner} to {path}; this is the only time the key"
            " is shown",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "revoke":
        gone = revoke_owner(path, args.owner)
        if not gone:
            raise ConfigError(f"{args.owner} has no keys in {path}")
        print(f"revoked {gone} key(s) of {args.owner}", file=sys.stderr)
        return 0
    counts: dict[tuple[str, str], int] = {}
    for entry in read_keys(path):
        counts[entry.owner, entry.role] = counts.get((entry.owner, entry.role), 0) + 1
    for (owner, role), n in sorted(counts.items()):
        print(f"{owner}\t{role}\t{n} key{'s' if n > 1 else ''}")
    return 0
