"""lc-doctor: what this machine can run — libraries, GPU, TensorRT, the lc plugins, usable backends.

The probes are library code (``runtime/doctor.py``, each in its own process); this prints them.
Exit status 0 always: the report is the result.
"""

from __future__ import annotations

import argparse
import json
import platform

from layercascade.errors import run_cli
from layercascade.runtime.doctor import Report, diagnose
from layercascade.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lc-doctor", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def report_lines(probes: dict[str, Report], backends: dict[str, Report], auto: Report | None) -> list[str]:
    width = max(map(len, probes)) + 2
    lines = [f"layercascade {__version__} on {platform.platform()}"]
    for name, probe in probes.items():
        status = "ok" if probe["ok"] else "--"
        text = " ".join(part for part in (probe.get("version") or "", probe["detail"]) if part)
        lines.append(f"  {status}  {name:<{width}}{text}")
    lines.append("backends lc-run can use:")
    for name, backend in backends.items():
        text = ", ".join(backend["devices"]) if backend["ok"] else f"no ({backend['detail']})"
        lines.append(f"  {'ok' if backend['ok'] else '--'}  {name:<{width}}{text}")
    if auto is None:
        lines.append("--backend auto: no backend here runs a model dir")
    else:
        line = f"--backend auto runs a model dir on {auto['backend']} at {auto['precision']}"
        if "smaller" in auto:
            smaller = auto["smaller"]
            line += (f" when it costs at least {auto['min_gmacs']:g} GMACs per image, a smaller one (faster there) on "
                     f"{smaller['backend']} at {smaller['precision']}")
        lines.append(line + " (an INT8 dir at int8)")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    probes, backends, auto = diagnose()
    if args.json:
        print(json.dumps({"version": __version__, "probes": probes, "backends": backends, "auto": auto}, indent=2))
    else:
        print("\n".join(report_lines(probes, backends, auto)))
    return 0


def cli() -> None:
    raise SystemExit(run_cli(main))
