# `make demo` and `make test` set everything up (a .venv with pinned versions) and run.
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/headway demo
test: setup
	.venv/bin/python -m pytest -q
bench: setup
	.venv/bin/python benchmarks/bench_scoring.py
