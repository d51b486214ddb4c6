"""The peer benchmark (`python -m bench.peers`, issue 16): gigabatch against the scripts a
user would write instead, side by side; and the in-process SDK peers `run_benchmarks` uses."""
