# pgha: the failover benchmark (benches/README.md). Not part of the tests.
#
#   sudo make bench            # K=5 failovers per case, 1, 2 and 4 standbys (~15-20 min)
#   sudo make bench QUICK=1    # K=1, 2 standbys only (~5 min)
#   sudo make bench K=3        # other K
#   sudo make bench QUICK=1 VARIANTS=repmgr,patroni,pgautofailover,pgha   # the peers (benches/README.md)
#   CASES=kill,blackhole NS=2,4 BENCH_LOCK=/tmp/pgha-e2e.lock narrow the matrix / lock each lab
#   (command-line variables reach bench.py through the environment)
#
# Results: target/bench/results.md, results.json, phases.svg, logs/.

K ?= 5
QUICK ?=
VARIANTS ?=

.PHONY: bench
bench:
	cargo build --release --bins
	python3 benches/bench.py --k $(K) $(if $(QUICK),--quick) $(if $(VARIANTS),--variants $(VARIANTS))
