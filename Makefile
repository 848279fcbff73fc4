# `make demo` and `make test` set everything up (a .venv with pinned versions) and run.
.PHONY: setup demo test test-browser bench
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/headway demo
test: setup
	.venv/bin/python -m pytest -q -m "not browser"
# the HTML report in headless Chromium (the system's; installed here where it can be)
test-browser: setup
	bash scripts/setup_browser.sh
	.venv/bin/python -m pytest -q -m browser tests/browser
bench: setup
	.venv/bin/python benchmarks/bench_scoring.py
