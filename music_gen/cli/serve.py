"""`music-gen serve`: the HTTP server, locally or on a cluster."""

from __future__ import annotations

import argparse

from music_gen.cli.common import config_args


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over HTTP (Ray Serve)",
        description="Run the HTTP app locally (blocks until Ctrl-C), or reload a running one.",
    )
    p.add_argument(
        "--model", help="checkpoint dir, transformers dir/hub id, runs:/..., models:/NAME@ALIAS"
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    config_args(p)
    p.set_defaults(run=run_serve)
    actions = p.add_subparsers(dest="serve_command", metavar="ACTION")
    r = actions.add_parser(
        "reload",
        help="make every replica load its model again (an alias is resolved again)",
        description="POST /admin/reload; the API key comes from $MUSIC_GEN_API_KEY.",
    )
    r.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    r.set_defaults(run=run_serve_reload, takes_overrides=False)


def run_serve(args: argparse.Namespace) -> int:
    from music_gen.serve.app import load_serve_config, run_local

    flags = {"model": args.model, "host": args.host, "port": args.port}
    run_local(load_serve_config(args.config, args.overrides, flags))
    return 0


def run_serve_reload(args: argparse.Namespace) -> int:
    from music_gen.serve.app import reload_remote

    answer = reload_remote(args.url)
    for replica in answer["replicas"]:
        version = (
            f"{replica['name']}/{replica['version']}" if replica["name"] else replica["source"]
        )
        print(f"{replica['replica']}: {version}")
    return 0
