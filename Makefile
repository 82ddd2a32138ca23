# salt-exp: every target bootstraps .venv from the pinned requirements on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= data/synthetic
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

.PHONY: venv test reliability data check train cv study dashboard ensemble pseudo swa predict serve report viz ui lint bench bench-precision bench-quality bench-ensemble bench-pseudo bench-context device-kit clean-cache

$(STAMP): requirements.txt requirements-dev.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

venv: $(STAMP)  ## create .venv and install the pinned requirements

test: $(STAMP)  ## run the whole test suite (CPU, minutes)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

RELIABILITY_OUT ?= .pytest_cache/reliability.json
reliability: $(STAMP)  ## the bad-input and fault matrices (the tests marked reliability), then docs/RELIABILITY.md from their results
	SALT_EXP_RELIABILITY_OUT=$(RELIABILITY_OUT) $(BIN)/python -m pytest -m reliability $(PYTEST_ARGS)
	$(BIN)/python -m tests.reliability $(RELIABILITY_OUT) --docs docs/RELIABILITY.md

$(DATA)/train.csv: | $(STAMP)
	$(BIN)/salt-exp data synth --out $(DATA)

data: $(DATA)/train.csv  ## write the synthetic dataset (once)

check: data  ## validate the synthetic dataset and show what it holds
	$(BIN)/salt-exp data check $(DATA)

CONFIG ?= configs/tiny.yaml
FOLD   ?= 0
train: data  ## one fold run of CONFIG on DATA, logged to MLflow (default: the tiny CPU config)
	$(BIN)/salt-exp train $(CONFIG) --fold $(FOLD) --set data.root=$(DATA) $(if $(STUDY),--study $(STUDY),)

cv: data  ## cross-validate CONFIG on DATA (FOLDS=0-4, default every fold; STUDY, CV_ARGS; FULL_FIT=1 then fits all tiles): cv run + nested fold runs, resumable
	$(BIN)/salt-exp cv $(CONFIG) --set data.root=$(DATA) $(if $(FOLDS),--folds $(FOLDS),) $(if $(STUDY),--study $(STUDY),) $(if $(FULL_FIT),--full-fit,) $(CV_ARGS)

NAME    ?= quickstart
WORKERS ?= 1
study: data  ## run (or resume) studies/NAME.yaml on DATA (then its ensemble); WORKERS=N, OPTUNA_STORAGE=url, YES=1 past the 24 h estimate check, STUDY_ARGS (e.g. --new)
	$(BIN)/salt-exp study studies/$(NAME).yaml --set data.root=$(DATA) --workers $(WORKERS) $(if $(OPTUNA_STORAGE),--storage $(OPTUNA_STORAGE),) $(if $(YES),--yes,) $(STUDY_ARGS)

dashboard: $(STAMP)  ## optuna-dashboard of study NAME on http://127.0.0.1:8080
	$(BIN)/optuna-dashboard $(or $(OPTUNA_STORAGE),mlruns/optuna/$(NAME).journal --storage-class JournalFileStorage) --host 127.0.0.1 --port 8080

ensemble: $(STAMP)  ## ensemble of study NAME from the registry -> submissions/NAME.csv
	$(BIN)/salt-exp ensemble --study $(NAME) $(ENSEMBLE_ARGS)

swa: $(STAMP)  ## SWA snapshot (cycles averaged, BatchNorm recalibrated) of each fold run of study STUDY (default NAME)'s best trial or cv run, registered beside its cycles; RUNS=all, SWA_ARGS (e.g. --top 3)
	$(BIN)/salt-exp swa --study $(or $(STUDY),$(NAME)) $(if $(RUNS),--runs $(RUNS),) $(SWA_ARGS)

pseudo: $(STAMP)  ## pseudo-labelling round from study STUDY's champion ensemble: labels (per fold, leak-free) + cv on train + labels in STUDY-pl<round>; CONFIG (given: with DATA), FOLDS, INTO, PSEUDO_ARGS; default config: the ensemble's best member's
	$(BIN)/salt-exp pseudo --study $(STUDY) $(if $(filter command line environment,$(origin CONFIG)),--config $(CONFIG) --set data.root=$(DATA),) $(if $(FOLDS),--folds $(FOLDS),) $(if $(INTO),--into $(INTO),) $(PSEUDO_ARGS)

MODEL ?= models:/salt-$(NAME)-ensemble@champion
predict: $(STAMP)  ## apply MODEL (default: study NAME's champion) to DATA's test tiles (or IMAGES=dir) -> OUT (default submissions/NAME-predict.csv)
	$(BIN)/salt-exp predict $(MODEL) $(if $(IMAGES),--images $(IMAGES),--data $(DATA)) --out $(or $(OUT),submissions/$(NAME)-predict.csv) $(if $(PROBS),--probs,)

PORT ?= 5001
serve: $(STAMP)  ## serve MODEL (default: study NAME's champion) over HTTP on 127.0.0.1:PORT (mlflow models serve)
	$(BIN)/salt-exp serve $(MODEL) --port $(PORT)

report: $(STAMP)  ## error-analysis page of study NAME's champion ensemble (or RUN=id) -> reports/, logged to the run
	$(BIN)/salt-exp report $(if $(RUN),--run $(RUN),--study $(NAME))

viz: $(STAMP)  ## mosaic PNG (MOSAIC=id, default: best covered) and evolution GIF of study NAME
	$(BIN)/salt-exp viz mosaic $(if $(RUN),--run $(RUN),--study $(NAME)) $(if $(MOSAIC),--mosaic-id $(MOSAIC),)
	$(BIN)/salt-exp viz evolution --study $(NAME) $(if $(MOSAIC),--mosaic-id $(MOSAIC),)

ui: $(STAMP)  ## the MLflow UI on http://127.0.0.1:5000 over mlruns/, opened on study NAME's training runs (the URL is printed)
	$(BIN)/salt-exp ui --study $(NAME)

lint: $(STAMP)
	$(BIN)/ruff check salt_exp tests benchmarks

bench: data  ## benchmarks; results go to docs/BENCHMARKS.md by hand
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_train.py --data $(DATA)
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_model_logging.py
	$(BIN)/python benchmarks/bench_jigsaw.py
	$(BIN)/python benchmarks/bench_viz.py --data $(DATA)
	$(BIN)/python benchmarks/bench_models.py

bench-precision: data  ## fp32 vs bf16: side-by-side speed against the smp peer, then val_map over 3 seeds (~10 min)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_train.py --precision-table
	$(BIN)/python benchmarks/bench_precision_accuracy.py --data $(DATA)

MINUTES ?= 25
bench-quality: $(STAMP)  ## smp loop vs harness configs at MINUTES per fold on DATA (real data); resumable parts -> benchmarks/results/quality.json
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_quality.py --data $(DATA) --minutes $(MINUTES) $(if $(FOLDS),--folds $(FOLDS),) $(if $(PIPELINES),--pipelines $(PIPELINES),) --docs

bench-ensemble: $(STAMP)  ## the ensemble waterfall of configs/cpu.yaml on DATA (real data), one fold per part -> benchmarks/results/ensemble.json
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_ensemble.py --data $(DATA) --minutes $(MINUTES) $(if $(FOLDS),--folds $(FOLDS),) --docs

bench-pseudo: $(STAMP)  ## pseudo-labelling rounds from configs/cpu.yaml's fold ensembles on DATA (real data), VARIANTS, one (variant, fold) per part -> benchmarks/results/pseudo.json
	$(BIN)/pip install --disable-pip-version-check -q -r requirements-bench.txt
	$(BIN)/python benchmarks/bench_pseudo.py --data $(DATA) --minutes $(MINUTES) $(if $(FOLDS),--folds $(FOLDS),) $(if $(VARIANTS),--variants $(VARIANTS),) --docs

EPOCHS ?= 8
bench-context: $(STAMP)  ## the mosaic-context model vs plain + mosaic rules on DATA (real data, mosaic-grouped folds, EPOCHS per fold run) -> benchmarks/results/context.json
	$(BIN)/python benchmarks/bench_context.py --data $(DATA) --epochs $(EPOCHS) $(if $(FOLDS),--folds $(FOLDS),) $(if $(PIPELINES),--pipelines $(PIPELINES),) --docs

KIT_DATA ?= ../shared/tgs
device-kit: $(STAMP)  ## kit/ for a lent GPU: py3.12 wheels the device lacks + KIT_DATA packed small (docs/GPU.md)
	$(BIN)/python benchmarks/device_kit.py build --data $(KIT_DATA) --kit kit

clean-cache:  ## drop the dataset cache and the artifacts downloaded for figures
	rm -rf $${SALT_EXP_CACHE:-$$HOME/.cache/salt-exp} $${SALT_EXP_WORK:-mlruns/work}/viz-cache
