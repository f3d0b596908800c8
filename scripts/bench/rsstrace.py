#!/usr/bin/env python3
"""rsstrace.py OUT CMD... -- runs CMD, samples its VmRSS every 0.25 s into OUT ("seconds KiB" lines).
For BENCH_WRAP, e.g. BENCH_WRAP="python3 scripts/bench/rsstrace.py /tmp/rss.txt"."""
import subprocess
import sys
import time

out, cmd = sys.argv[1], sys.argv[2:]
p = subprocess.Popen(cmd)
t0 = time.monotonic()
with open(out, "w") as f:
    while p.poll() is None:
        try:
            for line in open(f"/proc/{p.pid}/status"):
                if line.startswith("VmRSS:"):
                    f.write(f"{time.monotonic() - t0:.2f} {line.split()[1]}\n")
        except OSError:
            pass
        time.sleep(0.25)
sys.exit(p.returncode)
