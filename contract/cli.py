"""``emq-validate``: check messages read from stdin, one per line.

Made for the terminal: ``mosquitto_sub ... -t 'emotion/devices/+/result' | emq-validate``
prints ``ok`` or the reason a message breaks the contract, and with
``--summary`` a one-line digest of each good result.
"""

from __future__ import annotations

import argparse
import sys

from contract.validation import ContractError, parse_command, parse_reply, parse_result, parse_stats

PARSERS = {"result": parse_result, "stats": parse_stats, "command": parse_command, "reply": parse_reply}


def summarise(result) -> str:
    faces = ", ".join(f"#{face.track_id} {face.label} {face.confidence:.2f}" for face in result.faces) or "no faces"
    return f"{result.device_id} seq={result.seq} frame={result.frame_number} {result.captured_at}: {faces}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emq-validate", description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(PARSERS), default="result")
    parser.add_argument("--summary", action="store_true", help="print a digest of each valid result")
    args = parser.parse_args(argv)
    parse = PARSERS[args.kind]
    failures = 0
    for line in sys.stdin.buffer:
        line = line.strip()
        if not line:
            continue
        try:
            message = parse(line)
        except ContractError as error:
            failures += 1
            print(f"INVALID: {error.reason}", flush=True)
            continue
        print(summarise(message) if args.summary and args.kind == "result" else "ok", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
