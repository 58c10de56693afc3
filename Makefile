# The two commands of the README: `make run` and `make test`.  Both create
# .venv and install the project; as root on Debian they also install the
# system packages the servers and tests use (APT_PACKAGES), otherwise they
# say what to install.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# System tools the servers need to run (make run): TLS roots, and the
# tether's TUN routes and filter.
RUN_APT_PACKAGES ?= ca-certificates iproute2 nftables
# ... and what the tests use besides (make test): real clients and peers.
APT_PACKAGES ?= $(RUN_APT_PACKAGES) openssl ca-certificates curl procps swaks libnet-ssleay-perl isync ii weechat-headless \
	iproute2 nftables iputils-ping chromium postgresql netcat-openbsd bc aria2 redis-server transmission-cli python3-libtorrent
# Peers that only the benchmarks run.
BENCH_APT_PACKAGES ?= postfix ngircd iperf3 dovecot-imapd

.PHONY: run test typecheck bench sysdeps sysdeps-run venv venv-run clean

# make run HOST=0.0.0.0 SERVICES="bftp chat": a classroom, some servers only.
# It installs only what running needs (no test tools, no Chromium).
run: sysdeps-run venv-run
	$(PY) -m coursenet.devrun $(if $(HOST),--host $(HOST)) $(if $(SERVICES),--services "$(SERVICES)")

test: sysdeps venv
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy with the mypy-zope plugin over every package (settings in setup.cfg).
typecheck: sysdeps venv
	$(VENV)/bin/mypy

bench: sysdeps venv
	@APT_PACKAGES="$(BENCH_APT_PACKAGES)" sh .ci/sysdeps
	$(PY) -m bench $(BENCH_ARGS)

venv: $(VENV)/.installed
venv-run: $(VENV)/.installed-run

# The project alone, as pip install . gives it (the test venv has it too).
$(VENV)/.installed-run: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# An up-to-date test install already holds everything running needs.
	if [ $(VENV)/.installed -nt setup.cfg ] && [ $(VENV)/.installed -nt pyproject.toml ]; then :; else \
		$(PY) -m pip install -q --upgrade pip setuptools wheel && \
		$(PY) -m pip install -q -e . --config-settings editable_mode=compat; fi
	touch $@

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# compat mode: twistd cannot see plugins through PEP 660 import finders.
	$(PY) -m pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	touch $@

sysdeps:
	@APT_PACKAGES="$(APT_PACKAGES)" sh .ci/sysdeps

sysdeps-run:
	@APT_PACKAGES="$(RUN_APT_PACKAGES)" sh .ci/sysdeps

clean:
	rm -rf $(VENV) var build dist *.egg-info
