# sdkit — fresh machine: `make demo` (install + generate with the embedded model), `make test`.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
SDKIT     := $(VENV)/bin/sdkit
# torch first, so nothing else pulls another build. On this workplace's x86_64 machines these two are the
# pair that import together (PyPI's torchvision does not import beside the local CPU-only torch 2.13 file).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint bench clean shapes-model

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev,openvino]'
	touch $@

# The embedded shapes model (sdkit/assets/shapes) is the default --model: no network needed.
demo: install
	$(SDKIT) generate "a red circle on a blue background" --seed 1 --num-images 4 --cfg 5 --out outputs/demo

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check sdkit tests

# Retrain the embedded shapes model with sdkit's own recipe (about 2 h on one CPU core) and install it.
shapes-model: install
	OMP_NUM_THREADS=1 $(SDKIT) run recipes/train/shapes-base.yaml
	cp sdkit/assets/shapes/README.md runs/shapes-base/model-card.md
	rm -rf sdkit/assets/shapes && cp -r runs/shapes-base/unet6/model sdkit/assets/shapes
	cp runs/shapes-base/model-card.md sdkit/assets/shapes/README.md  # the model card is kept; update its numbers

bench: install
	$(PY) -m bench

clean:
	rm -rf $(VENV) outputs .pytest_cache .cache
