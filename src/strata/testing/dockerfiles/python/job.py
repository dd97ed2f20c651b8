"""A small job: reads its environment and arguments, computes, writes a file, reports."""

import hashlib
import os
import socket
import sys

words = sys.argv[1:] or ["strata"]
primes = [n for n in range(2, 2000) if all(n % d for d in range(2, int(n ** 0.5) + 1))]
digest = hashlib.sha256(" ".join(words).encode()).hexdigest()
with open("/tmp/result.txt", "w") as out:
    out.write(digest + "\n")
print(f"{os.environ['GREETING']} {' '.join(words)}")
print(f"primes below 2000: {len(primes)}")
print(f"sha256: {digest}")
print(f"pid {os.getpid()} cwd {os.getcwd()} host {socket.gethostname()}")
with open("/tmp/result.txt") as back:
    assert back.read().strip() == digest
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
