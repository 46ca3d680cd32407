"""The command line: ``python -m pytest_instrumental agreement A B``,
``python -m pytest_instrumental vector --model M --out FILE`` and
``python -m pytest_instrumental calibrate RECORDED --judge J --out FILE``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_instrumental.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_instrumental")
    commands = parser.add_subparsers(dest="command", required=True)
    agreement = commands.add_parser(
        "agreement",
        help="compare the verdicts of two runs on the same items",
        description="Match items by model, suffix and scenario and print Cohen's kappa, the confusion "
        "matrix and per-cell Conv%/Refusal% differences. A and B are results JSON files "
        "(--instrumental-json) or directories of reference run logs.",
    )
    agreement.add_argument("a", type=Path, help="results JSON or reference-runs directory (rows)")
    agreement.add_argument("b", type=Path, help="results JSON or reference-runs directory (columns)")
    vector = commands.add_parser(
        "vector",
        help="compute and save a model's steering vector",
        description="The pro_ic - anti_ic contrast vector (CAA) of a local model over every scenario, saved as "
        "safetensors (direction, layer, norm) for --instrumental-vector-file.",
    )
    vector.add_argument("--model", required=True, help="a local model: alias, hub id in the cache, or directory")
    vector.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    vector.add_argument("--layer", type=int, default=None, help="the decoder layer (default: the middle one)")
    calibrate = commands.add_parser(
        "calibrate",
        help="measure a judge against labelled responses and write its calibration",
        description="The judge labels every response recorded under RECORDED (a results JSON, or a directory "
        "of reference run logs), whose recorded verdicts are the reference; its confusion matrix is written "
        "for --instrumental-judge-calibration.",
    )
    calibrate.add_argument("recorded", type=Path, help="results JSON or reference-runs directory (the reference)")
    calibrate.add_argument("--judge", required=True, help="the judge to measure (as --judge takes it)")
    calibrate.add_argument("--out", type=Path, required=True, help="the calibration file to write")
    args = parser.parse_args(argv)
    try:
        if args.command == "agreement":
            from pytest_instrumental.agreement import compare, format_agreement, load_verdicts

            lines = format_agreement(compare(load_verdicts(args.a), load_verdicts(args.b)), str(args.a), str(args.b))
        elif args.command == "calibrate":
            from pytest_instrumental.calibrate import calibrate as measure

            lines = measure(args.recorded, args.judge, args.out)
        else:
            lines = _vector(args.model, args.out, args.layer)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def _vector(model: str, out: Path, layer: int | None) -> list[str]:
    from pytest_instrumental.backends.registry import check_loadable, open_backend, parse_model
    from pytest_instrumental.backends.steering import contrast_vector, default_layer, save_vector
    from pytest_instrumental.backends.transformers import TransformersBackend
    from pytest_instrumental.options import Settings
    from pytest_instrumental.plan import contrast_pairs
    from pytest_instrumental.vocabulary.scenarios import load_scenarios
    from pytest_instrumental.vocabulary.suffixes import load_suffixes

    spec = parse_model(model)
    check_loadable(spec, trust_remote_code=False)
    settings = Settings(cache_dir=Path.cwd(), snapshot_dir=Path.cwd())
    backend = open_backend(spec, settings.generation, settings.server)
    if not isinstance(backend, TransformersBackend):
        raise InputError(f"--model {model!r}: a steering vector needs a local model's weights")
    pairs = contrast_pairs(load_suffixes(), load_scenarios(), "vector")
    pro = [backend.encode(p) for p, _ in pairs]
    anti = [backend.encode(a) for _, a in pairs]
    chosen = default_layer(backend.model) if layer is None else layer
    vector = contrast_vector(backend.model, pro, anti, chosen, f"caa:layer={chosen}:all")
    save_vector(vector, out)
    return [
        f"wrote {out}",
        f"layer {vector.layer}, direction norm {float(vector.direction.norm()):.4g}, "
        f"typical residual norm {vector.norm:.4g}, {len(pro)} contrast pairs",
    ]


if __name__ == "__main__":
    sys.exit(main())
