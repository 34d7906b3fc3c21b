"""`music-gen registry`: versions, aliases, promotion and rollback."""

from __future__ import annotations

import argparse


def add_registry(sub: argparse._SubParsersAction) -> None:
    """`music-gen registry list|register|promote|rollback|show`."""
    p = sub.add_parser(
        "registry",
        help="register, promote and roll back models in the MLflow registry",
        description="The MLflow model registry (MLFLOW_TRACKING_URI, default the sqlite store "
        "under the work dir). Promotion moves an alias (e.g. production) behind a metric gate "
        "and records who, when, why and the previous holder as version tags; rollback "
        "returns the alias to that previous holder.",
    )
    reg = p.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    ls = reg.add_parser("list", help="versions, aliases, metrics, source run, created")
    ls.add_argument("name", nargs="?", help="one registered model (default: all)")
    ls.set_defaults(run=run_registry_list)

    r = reg.add_parser("register", help="register a new version")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--run", dest="run_id", help="a training run id (its logged model and metrics)"
    )
    src.add_argument("--checkpoint", help="a checkpoint directory (its training metrics)")
    src.add_argument("--model", help="any model source: dir, transformers dir/hub id, models:/")
    r.add_argument("--name", required=True, help="registered model name")
    r.set_defaults(run=run_registry_register)

    pr = reg.add_parser(
        "promote",
        help="point an alias at a version if it passes the gate",
        description="The candidate's metric (a metric.<name> version tag, written at "
        "registration or by `evaluate --register-metrics`) must be no worse than the "
        "current holder's by more than --margin; else the promotion is refused.",
    )
    pr.add_argument("name", help="registered model name")
    pr.add_argument("--version", required=True, help="the candidate version")
    pr.add_argument("--alias", default="production")
    pr.add_argument("--metric", default="val_loss", help="gate metric (lower is better)")
    pr.add_argument("--margin", type=float, default=0.0, help="allowed worsening of the metric")
    pr.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    pr.add_argument("--reason", default="", help="why (recorded on the version)")
    pr.set_defaults(run=run_registry_promote)

    rb = reg.add_parser("rollback", help="return an alias to its previous holder")
    rb.add_argument("name", help="registered model name")
    rb.add_argument("--alias", default="production")
    rb.add_argument("--reason", default="", help="why (recorded on the version rolled back)")
    rb.set_defaults(run=run_registry_rollback)

    sh = reg.add_parser("show", help="one version: NAME@ALIAS or NAME/VERSION")
    sh.add_argument("ref", metavar="NAME@ALIAS")
    sh.set_defaults(run=run_registry_show)


def _version_line(row: dict) -> str:
    aliases = ",".join(row["aliases"]) or "-"
    metrics = " ".join(f"{k}={float(v):.4f}" for k, v in sorted(row["metrics"].items())) or "-"
    run = row["run_id"] or "-"
    return f"{row['name']:<20} {row['version']:>4}  {aliases:<14} {run:<32}  {row['created']}  {metrics}"


def run_registry_list(args: argparse.Namespace) -> int:
    from music_gen.platform import registry

    rows = registry.list_versions(args.name)
    print(f"{'model':<20} {'ver':>4}  {'aliases':<14} {'source run':<32}  {'created':<25}  metrics")
    for row in rows:
        print(_version_line(row))
    if not rows:
        print("(no registered models)")
    return 0


def run_registry_register(args: argparse.Namespace) -> int:
    from music_gen.platform import registry

    done = registry.register_source(
        args.name, run_id=args.run_id, checkpoint=args.checkpoint, model=args.model
    )
    print(f"registered models:/{done['name']}/{done['version']} (run {done['run_id']})")
    return 0


def run_registry_promote(args: argparse.Namespace) -> int:
    from music_gen.platform import registry

    done = registry.promote(
        args.name, args.version, args.alias, metric=args.metric, margin=args.margin,
        force=args.force, reason=args.reason,
    )  # fmt: skip
    before = f" (was version {done['previous']})" if done["previous"] else ""
    print(f"{done['name']}@{done['alias']} -> version {done['version']}{before}")
    if done["forced"]:
        print(f"forced past the gate: {done['gate']}")
    return 0


def run_registry_rollback(args: argparse.Namespace) -> int:
    from music_gen.platform import registry

    done = registry.rollback(args.name, args.alias, reason=args.reason)
    print(f"{done['name']}@{done['alias']} -> version {done['version']} (was {done['from']})")
    return 0


def run_registry_show(args: argparse.Namespace) -> int:
    from music_gen.platform import registry

    row = registry.show(args.ref)
    print(f"models:/{row['name']}/{row['version']}  aliases: {', '.join(row['aliases']) or '-'}")
    print(f"source   {row['source']}")
    print(f"run      {row['run_id'] or '-'}")
    print(f"created  {row['created']}")
    for key, value in sorted(row["tags"].items()):
        print(f"  {key} = {value}")
    return 0
