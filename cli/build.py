"""lc-build: TensorRT engines (fp32, fp16 or int8) of a model dir, one per stage graph."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from layercascade.cli.args import sizes
from layercascade.errors import fail, run_cli
from layercascade.runtime.trt.engines import METADATA, PRECISIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lc-build",
        description="Build TensorRT engines from a model dir written by lc-export (or lc-calibrate for int8): "
                    "stage1/2/3.engine, dense.engine (lc-bench's baseline), engines.json (TensorRT version, GPU, "
                    "precision, I/O shapes, hashes) and lc.json, written atomically. Run the engines with "
                    "lc-run --model ENGINE_DIR. Needs TensorRT and an NVIDIA GPU; engines run only on the GPU "
                    "architecture and TensorRT version they were built with. --check needs neither: it lists what "
                    "TensorRT's ONNX parser would reject in the graphs (lc-build runs it before every build) and "
                    "the optimization profile lc-build would build.",
    )
    parser.add_argument("model", nargs="?", default=None, type=Path, metavar="DIR",
                        help="model directory from lc-export / lc-calibrate (default: the bundled demo model)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32: the graphs as exported; fp16: converted to fp16 compute with fp32 I/O; int8: "
                             "the QDQ graphs of lc-calibrate (networks are strongly typed: the graph's types rule); "
                             "required to build; with --check, default: every precision the dir builds at")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="ENGINE_DIR",
                        help="folder for the engines (replaced if it holds engines; never a model dir); required to "
                             "build")
    parser.add_argument("--check", action="store_true",
                        help="only check every graph against the operator table of TensorRT's ONNX parser (op and "
                             "input types, restrictions, uint8/int8 placement, the plugin's attributes, input "
                             "dimensions no profile covers; NonZero as a warning): one line per problem, then the "
                             "optimization profile (batch, image sizes) a build would use; exit status 1 if any is an "
                             "error; no TensorRT needed")
    parser.add_argument("--timing-cache", type=Path, default=None, metavar="FILE",
                        help="TensorRT timing cache: read if present, updated after the build (faster rebuilds)")
    parser.add_argument("--workspace", type=float, default=None, metavar="GiB",
                        help="limit of TensorRT's workspace memory pool (default: TensorRT's, the GPU's memory)")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="largest batch of the optimization profile (models exported with --dynamic-batch; "
                             "default: the export's maximum)")
    parser.add_argument("--shapes", type=sizes(3, "64x64:512x512:1024x1024"), default=None,
                        metavar="MINxMIN:OPTxOPT:MAXxMAX",
                        help="image sizes of the optimization profile (models exported with --dynamic-size): the "
                             "engines take every size from MIN to MAX (multiples of 8, within the export's bounds), "
                             "their kernels are timed at OPT, and device memory is sized for MAX (default: the "
                             "export's bounds, its nominal input size as OPT)")
    parser.add_argument("--version-compatible", action="store_true",
                        help="engines that later TensorRT releases of the same major version can run")
    parser.add_argument("--json", action="store_true",
                        help=f"print {METADATA} when done (no progress bar); with --check, the findings")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from layercascade.runtime.inputs import DEMO_MODEL
    from layercascade.runtime.trt.build import BuildOptions, build_engines

    if args.check:
        return check(args.model or DEMO_MODEL, args.precision, args.json, args.max_batch, args.shapes)
    if args.precision is None or args.output is None:
        fail("lc-build needs --precision and -o ENGINE_DIR to build (or --check to check the graphs only)")
    options = BuildOptions(args.precision, args.timing_cache, args.workspace, args.max_batch, args.version_compatible,
                           args.shapes)
    target = build_engines(args.model or DEMO_MODEL, args.output, options, progress=not args.json)
    if args.json:
        print((target / METADATA).read_text(), end="")
    else:
        print(f"engines -> {target}  (run them with lc-run --model {target})")
    return 0


def check(model_dir: Path, precision: str | None, as_json: bool, max_batch: int | None = None,
          shapes: tuple | None = None) -> int:
    """lc-build --check: every finding, one line each (or JSON), the profile a build would use, then a summary;
    1 if any error. A --max-batch or --shapes the export does not take is one line (exit 1) before any check."""
    from layercascade.manifest import read_manifest
    from layercascade.runtime.trt.build import build_profile, check_model_dir
    from layercascade.runtime.trt.check import as_json as findings_json
    from layercascade.runtime.trt.check import operator_table, summary

    manifest = read_manifest(model_dir)
    profile = build_profile(manifest, max_batch, shapes)
    findings, graphs = check_model_dir(model_dir, precision)
    errors = sum(f.level == "error" for f in findings)
    table = operator_table()
    if as_json:
        print(json.dumps({"model": str(model_dir), "tensorrt_operator_table": table["tensorrt_version"],
                          "graphs": graphs, "errors": errors, "findings": findings_json(findings),
                          "profile": {"batch": vars(profile.batch),
                                      "size": profile.sizes.record() if profile.sizes else None}}))
    else:
        for finding in findings:
            print(finding.line())
        print(f"profile: {profile.describe(manifest)}")
        print(f"{model_dir}: {summary(findings, graphs)} (TensorRT {table['tensorrt_version']}'s ONNX parser "
              "operator table)")
    return 1 if errors else 0


def cli() -> None:
    raise SystemExit(run_cli(main))
