"""`music-gen export`: a model as a clean serving bundle (safetensors) or as ONNX graphs."""

from __future__ import annotations

import argparse


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model (safetensors bundle or ONNX graphs)",
        description=(
            "Write a model to a new folder: 'safetensors' is the save_pretrained layout with "
            "no training state (loads with MusicGen.from_pretrained); 'onnx' is the text "
            "conditioner, the cross-attention start and one decoder step with its key/value "
            "cache, plus onnx_export.json describing them (needs the onnx extra)."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint dir, training run dir (its newest complete checkpoint), "
        "transformers MusicGen dir/hub id, models:/NAME@ALIAS",
    )
    p.add_argument("--format", required=True, metavar="FORMAT", help="onnx or safetensors")
    p.add_argument("--output", "-o", required=True, help="a new (or empty) folder")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from music_gen.pipelines import export

    export.check_format(args.format)  # before the output and the model: the cheapest first
    export.check_output(args.output)
    out = export.export(args.model, args.format, args.output)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    size = sum((out / f).stat().st_size for f in files)
    print(
        f"exported {args.model} as {args.format} to {out} ({len(files)} files, {size / 1e6:.1f} MB)"
    )
    return 0
