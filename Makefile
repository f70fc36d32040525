# pgha: the failover benchmark (benches/README.md). Not part of the tests.
#
#   sudo make bench            # K=5 failovers per case, 1, 2 and 4 standbys (~15-20 min)
#   sudo make bench QUICK=1    # K=1, 2 standbys only (~5 min)
#   sudo make bench K=3        # other K
#   sudo make bench PG=16 POOL=4.7 CASES=blackhole NS=2,4   # other versions, cases, N
#   sudo make bench QUICK=1 VARIANTS=repmgr,patroni,pgautofailover,pgha   # the peers (benches/README.md)
#   CASES=kill,blackhole NS=2,4 BENCH_LOCK=/tmp/pgha-e2e.lock narrow the matrix / lock each lab
#   sudo make bench CASES=kill,watchdog NS=2 VARIANTS=pgha,pgha+follow   # three pgpools (watchdog)
#   beside one; only when CASES names it (~7 min more at K=5; benches/README.md)
#   (command-line variables reach bench.py through the environment)
#
# Results: target/bench/results.md, results.json, phases.svg, logs/.
#
# The fault campaign (issue 18, benches/campaign.py; not part of the tests):
#   sudo make campaign FAULTS=20             # 20 random faults, a random seed
#   sudo make campaign SEED=42 MINUTES=30    # replay seed 42 for 30 minutes
#   sudo make campaign ONLY=kill-primary,switchover PGPOOLS=3
# Results: target/campaign/report.json, summary.md, logs/.

K ?= 5
QUICK ?=
VARIANTS ?=
# PG=15|16|18 and POOL=4.3|4.7: the versions lab/versions.sh provides.
PG ?=
POOL ?=

.PHONY: bench campaign
bench:
	cargo build --release --bins
	$(if $(PG)$(POOL),eval "$$(lab/versions.sh $(or $(PG),15) $(or $(POOL),4.3))" && export PGHA_PG_BIN PGHA_PGPOOL_BIN && ) \
	python3 benches/bench.py --k $(K) $(if $(QUICK),--quick) $(if $(VARIANTS),--variants $(VARIANTS))

campaign:
	cargo build --release --bins
	$(if $(PG)$(POOL),eval "$$(lab/versions.sh $(or $(PG),15) $(or $(POOL),4.3))" && export PGHA_PG_BIN PGHA_PGPOOL_BIN && ) \
	python3 benches/campaign.py $(if $(ONLY),--only $(ONLY)) $(if $(PGPOOLS),--pgpools $(PGPOOLS)) $(if $(STANDBYS),--standbys $(STANDBYS))
