# Every target creates .venv itself; a fresh machine needs nothing but python3.11.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, exact version: anything else pulls several GB of CUDA packages.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# train in rates, then the same weights in spikes on every engine (the first Brian2 run compiles
# its simulation once, cached under ~/.cache/spikeep), then the gradient estimators' check
demo: $(STAMP)
	$(BIN)/spikeep train protocols/quickstart.toml --out out/quickstart --overwrite
	$(BIN)/spikeep plot out/quickstart
	$(BIN)/spikeep compare out/quickstart/checkpoint.pt --images 2000
	@echo "results: out/quickstart/metrics.jsonl, checkpoint out/quickstart/checkpoint.pt, plots out/quickstart/curves.png and raster.png"
	$(BIN)/spikeep gradcheck --model models/tiny.toml --estimator all --beta 0.01 --dtype float64

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# spikeep beside the autograd-per-step approach, a hand-fused step and the FLOP limit
# (docs/benchmarks.md); then the thread settings under load (it starts one busy process itself)
bench: $(STAMP)
	$(BIN)/python benchmarks/ep_step.py
	$(BIN)/python benchmarks/threads.py
	$(BIN)/spikeep bench ep-step --model models/mlp_784_500_10.toml --batch 100 --free-steps 20 --nudged-steps 4

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check spikeep tests benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info
