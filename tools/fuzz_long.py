"""The long fuzz run: random byte and protobuf-field mutants of valid tiny ONNX
files fed to load, inspect, harden (qdq, int4), eval, the gradient builder run by onnxruntime and
lipschitz, in a crash-proof worker (tests/unit/fuzz_cases.py). Stops after --cases mutants or
--minutes, whichever comes first; prints outcome counts and findings grouped by exception and
the deepest qrdeploy frame, and writes every finding's mutant to --keep DIR for replay.

Usage: python tools/fuzz_long.py [--cases 20000] [--minutes 8] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit import fuzz_cases as fc  # noqa: E402


def mutant(bases: list[bytes], rng: random.Random) -> tuple[str, bytes]:
    base = bases[rng.randrange(len(bases))]
    if rng.random() < 0.35:
        edits = [(rng.randrange(4), rng.randrange(2**20), rng.randrange(256))
                 for _ in range(rng.randint(1, 4))]
        return "bytes", fc.mutate_bytes(base, edits)
    seeds = [(rng.randrange(len(fc.FIELD_MUTATORS)), rng.randrange(2**32))
             for _ in range(rng.randint(1, 3))]
    return "fields", fc.mutate_fields(base, seeds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=20000)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=60.0, help="per case; longer is a hang")
    p.add_argument("--keep", default=None, help="folder for the mutants that gave findings")
    args = p.parse_args()
    rng, bases = random.Random(args.seed), fc.base_models()
    outcomes: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    start, n, with_finding = time.monotonic(), 0, 0
    with fc.Runner(timeout_s=args.timeout) as runner:
        while n < args.cases and time.monotonic() - start < args.minutes * 60:
            kind, data = mutant(bases, rng)
            result = runner.run(data)
            n += 1
            kinds[kind] += 1
            outcomes.update(o.splitlines()[0] for o in result)
            found = fc.findings(result)
            groups.update(f.splitlines()[0][:220] for f in found)
            if found:
                with_finding += 1
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    (Path(args.keep) / f"finding{n:06d}.onnx").write_bytes(data)
            if n % 1000 == 0:
                print(f"{n} cases, {time.monotonic() - start:.0f} s, {with_finding} with findings",
                      flush=True)
    seconds = time.monotonic() - start
    reached = {s: sum(v for k, v in outcomes.items() if k.startswith(f"{s}:"))
               for s in ("load", "inspect", "harden-qdq", "eval", "gradients", "lipschitz")}
    summary = {
        "cases": n, "seconds": round(seconds, 1), "seed": args.seed, "mutants": dict(kinds),
        "cases_with_findings": with_finding, "load_ok": outcomes["load:ok"],
        "stage_outcomes": reached,
        "ok_per_stage": {k.split(":")[0]: v for k, v in outcomes.items() if k.endswith(":ok")},
        "findings": dict(groups.most_common()),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
