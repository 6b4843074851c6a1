# One-command set-up: every target installs what it needs into .venv first.
#   make demo   a simulated flight of the shipped spiking network through ROS 2 nodes, recorded to a bag
#   make test   the test suite (what CI runs)
SHELL := /bin/bash
# Mandatory here: DDS discovery stays on this machine.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export PYTHONUNBUFFERED := 1

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo-pid test bench clean

$(STAMP): requirements.txt requirements-core.txt setup.py setup.cfg package.xml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the pinned CPU wheel, so nothing can pull a CUDA build
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

DEMO_BAG ?= runs/demo_flight
DEMO_MODE ?= realtime

# the hop mission (config/missions/hop.yaml) with the shipped SNN; `make demo DEMO_MODE=lockstep` steps
# the simulation only when every drone's command for the step has arrived
demo: install
	$(BIN)/snnctl launch sim_snn.launch.yaml mission:=hop mode:=$(DEMO_MODE) record:=true \
		bag:=$(DEMO_BAG) --duration 60 --monitor
	$(BIN)/snnctl bag info $(DEMO_BAG)
	$(BIN)/snnctl bag report $(DEMO_BAG)

demo-pid: install
	$(BIN)/snnctl launch sim_pid.launch.yaml mission:=hop --duration 60 --monitor

test: install
	ROS_LOG_DIR=$${ROS_LOG_DIR:-$$(mktemp -d)} $(BIN)/python -m pytest test -q -ra --durations=15

bench: install
	# snnTorch only for the comparison in `bench policy` (pinned: it must not move torch)
	$(BIN)/pip install -q --disable-pip-version-check snntorch==1.0.0
	$(BIN)/snnctl bench sim
	$(BIN)/snnctl bench policy
	$(BIN)/snnctl bench loop
	$(BIN)/snnctl bench sil

clean:
	rm -rf $(VENV) build install log .pytest_cache
