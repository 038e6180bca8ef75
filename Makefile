# cnnlab make targets. `make train` and `make test` create the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=
STAMP  := $(VENV)/.installed

.PHONY: install train test test-all sweep search transfer-demo course eval export predict app visualize models bench bench-gpu bench-serving tensorboard lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned to the release this project is developed on; the package's ranges admit it
	$(PY) -m pip install "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install cnnlab (editable, with dev extras)

train: $(STAMP) ## train the default recipe (simple CNN on the embedded digits); extra overrides via ARGS=
	$(PY) train.py $(ARGS)

# loadfile: each test file on one process, so a file's shared run (a module fixture) is trained once, not once
# per process (the runs several files read are trained once through tests/once.py); --no-loadscope-reorder
# keeps the order tests/conftest.py gives, the files that build runs first, so that short files end the run
# the tests start many Python processes (train.py, predict, the app) that import cnnlab's modules, and pytest
# rewrites every test module's asserts: where PYTHONDONTWRITEBYTECODE is set, each process compiles them anew
test test-all: export PYTHONDONTWRITEBYTECODE :=
test: $(STAMP) ## the fast test suite
	$(PY) -m pytest -m "not slow" -n 2 --dist loadfile --no-loadscope-reorder $(ARGS)

test-all: $(STAMP) ## every test, slow ones included
	$(PY) -m pytest -n 2 --dist worksteal $(ARGS)

sweep: $(STAMP) ## a small example multirun: 2 models x 2 optimizers on digits
	$(PY) train.py -m model=mlp,simple_cnn optimizer=sgd,adam $(ARGS)

search: $(STAMP) ## an Optuna search of 8 trials on digits (run again to continue it): outputs/search/digits_lr/
	$(PY) train.py -m hparams_search=digits_lr $(ARGS)

transfer-demo: $(STAMP) ## offline transfer learning on translated digits: 0-4 pretrain, scratch vs fine-tune on 5-9
	$(PY) scripts/transfer_demo.py $(ARGS)

course: $(STAMP) ## the course's offline lessons in order, one report: outputs/course/<date>/index.html; ARGS="--quick" or "--only lesson1"
	$(PY) scripts/course.py $(ARGS)

eval: $(STAMP) ## evaluate a checkpoint: make eval CKPT=outputs/.../checkpoints/best.ckpt
	$(PY) -m cnnlab.evaluate ckpt_path=$(CKPT) $(ARGS)

export: $(STAMP) ## export a checkpoint: make export CKPT=... [FORMATS=pt2,onnx,torchscript] [OUT=dir]
	$(PY) -m cnnlab.export $(CKPT) $(if $(FORMATS),--formats $(FORMATS),) $(if $(OUT),--out $(OUT),)

predict: $(STAMP) ## predictions for images: make predict MODEL=<run>/export IMAGES="a.png b.jpg" [ARGS=--json]
	$(PY) -m cnnlab.predict $(MODEL) $(IMAGES) $(ARGS)

app: $(STAMP) ## serve the best export under outputs/ (or MODEL=...) at http://127.0.0.1:8000
	$(PY) -m cnnlab.app.server $(MODEL) $(ARGS)

visualize: $(STAMP) ## what a CNN sees: make visualize ARGS="filters a.png" | "cam <run> a.png" | ...
	$(PY) -m cnnlab.visualize.cli $(ARGS)

models: $(STAMP) ## the architecture comparison table of every classifier: make models ARGS="--no-speed --sort gmacs"
	$(PY) -m cnnlab.models.table $(ARGS)

bench: $(STAMP) ## cnnlab against a plain PyTorch loop: images/s, their ratio, the phases of a run (ARGS="--jobs digits")
	$(PY) scripts/bench.py $(ARGS)

GPU_OUT ?= outputs/bench/gpu
bench-gpu: $(STAMP) ## on a GPU: ResNets against a plain loop, the dense metrics' updates, host syncs per step (GPU_OUT=)
	mkdir -p $(GPU_OUT)
	$(PY) scripts/sync_check.py --out $(GPU_OUT)
	$(PY) scripts/bench_metrics.py --device cuda > $(GPU_OUT)/metrics_segmentation.txt
	$(PY) scripts/bench_metrics.py --task anomaly --batch 16 --device cuda > $(GPU_OUT)/metrics_anomaly.txt
	cat $(GPU_OUT)/metrics_segmentation.txt $(GPU_OUT)/metrics_anomaly.txt
	$(PY) scripts/bench.py --device cuda --jobs resnet18_224,resnet50_224,cifar_resnet --out $(GPU_OUT) $(ARGS)

bench-serving: $(STAMP) ## export time, file size and time per prediction of every format and task
	$(PY) scripts/bench_serving.py $(ARGS)

tensorboard: $(STAMP) ## TensorBoard over every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs --bind_all

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests scripts train.py
	$(VENV)/bin/ruff format --check src tests scripts train.py

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests scripts train.py
	$(VENV)/bin/ruff format src tests scripts train.py

clean:
	rm -rf outputs/* .pytest_cache .ruff_cache lightning_logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
