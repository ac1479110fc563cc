# kmsfs — the front door. `make demo`, `make test`, `make bench`, `make lint`,
# `make ci` (what .ci/run runs).
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

# Pinned tools, installed into ./bin on first use.
LOCAL_KMS_VERSION := v0.0.0-20260228092603-2a5e92d09ab6
STATICCHECK_VERSION := v0.8.2
BENCHSTAT_VERSION := v0.0.0-20260908200009-22c9c6c9d4da

TEST_TIMEOUT ?= 30m
BENCH_COUNT ?= 6

.PHONY: all build test soak bench lint vectors tools clean demo demo-stop

all: build

build:
	$(GO) build -o $(BIN)/kmsfs ./cmd/kmsfs

test: build $(BIN)/local-kms
	$(GO) test -timeout $(TEST_TIMEOUT) ./...

# The long stress runs: 1,000,000 exerciser operations per block size and
# 200 crash rounds per block size (seeds printed; KMSFS_SEED=N replays one).
soak: build $(BIN)/local-kms
	@mkdir -p out
	KMSFS_SOAK=1 KMSFS_SOAK_OPS=1000000 $(GO) test -count=1 -timeout 3h -v -run 'TestExerciser|TestConcurrent|TestCrash' ./integration/ 2>&1 | tee out/soak.txt | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|seed|rounds|ops'

# The envelope benchmarks in BENCH_COUNT passes over all of them (not
# -count, which runs each benchmark's samples back to back, so a minute of
# a busy host lands on every sample of one row); the table shows medians.
# Compare two runs with: bin/benchstat old.txt out/bench-envelope.txt
# Then the filesystem benchmark, bench-fs below.
bench: bench-envelope
	@$(MAKE) --no-print-directory bench-fs

bench-envelope: $(BIN)/benchstat
	@mkdir -p out
	$(GO) test -c -o out/envelope.test ./envelope/
	@: > out/bench-envelope.txt
	@set -e; for i in $$(seq $(BENCH_COUNT)); do \
		echo "pass $$i of $(BENCH_COUNT)"; \
		(cd envelope && ../out/envelope.test -test.run '^$$' -test.bench . -test.benchmem) > out/bench-envelope-pass.txt; \
		tee -a out/bench-envelope.txt < out/bench-envelope-pass.txt; \
	done
	@echo
	@$(GO) run ./envelope/internal/benchtable < out/bench-envelope.txt | tee out/bench-envelope-table.txt
	@echo

# The filesystem benchmark (needs root): kmsfs against a plain go-fuse
# loopback with passthrough off, backing dirs on a tmpfs, medians of
# BENCH_ROUNDS (3) alternating rounds, and the AES-GCM floor (opening 1 GiB
# in process) beside the sequential read. The untar group runs on a volume
# with encrypted names too, set against names in the clear (vs names-off). BENCH_PHASES=seq,rand,small,untar,
# small-kms10ms,untar-kms10ms runs a subset, BENCH_QUICK=1 a small smoke run,
# KMSFS_MOUNT_FLAGS adds flags to `kmsfs mount`. Writes out/bench-fs.json and
# out/bench-fs-table.txt.
.PHONY: bench-envelope bench-fs fio
bench-fs: build $(BIN)/local-kms fio
	@mkdir -p out
	$(GO) build -o $(BIN)/loopbackfs ./internal/loopbackfs
	$(GO) build -o $(BIN)/fsbench ./internal/fsbench
	$(BIN)/fsbench -kmsfs $(BIN)/kmsfs -loopbackfs $(BIN)/loopbackfs -out out

# fio from the Debian archive, installed on first use.
fio:
	@command -v fio >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y fio || { apt-get update && apt-get install -y fio; }; }

# Start the bundled KMS emulator on loopback, init and mount a demo volume,
# show a file and its ciphertext. `make demo-stop` tears it down.
demo: build $(BIN)/local-kms
	@scripts/demo.sh

demo-stop:
	@scripts/demo.sh stop

# The legs of CI, in order; `make ci` runs them all, and .ci/run runs
# `make ci`, so a developer runs exactly what CI does. Each leg is a target
# of its own for running one alone.
CI_LEGS := test lint race test-gcm-go build-nocgo cross

# The unit packages, which `make race` runs again under the race detector.
# integration/ is left out: under -race it alone would take the CI run
# past its 20-minute budget on a 2-core machine, and the daemon processes
# it starts are built without -race anyway.
RACE_PKGS := ./envelope/... ./journal/... ./stanza/... ./keysource/... ./internal/... ./volume/... ./fs/

.PHONY: ci race test-gcm-go build-nocgo cross

# Every leg runs, even after one fails, so one run reports them all; the
# summary gives each leg's result and wall time.
ci:
	@failed=(); summary=""; for leg in $(CI_LEGS); do \
		echo "=== make $$leg"; start=$$SECONDS; \
		if $(MAKE) --no-print-directory $$leg; then r=ok; else r=FAIL; failed+=($$leg); fi; \
		summary+=$$(printf '  %-12s %-4s %5ds' $$leg $$r $$((SECONDS - start)))$$'\n'; \
	done; \
	printf '=== make ci\n%s' "$$summary"; \
	if [ $${#failed[@]} -gt 0 ]; then echo "=== FAILED: $${failed[*]}"; exit 1; fi

race: $(BIN)/local-kms
	GORACE=atexit_sleep_ms=0 $(GO) test -race -timeout $(TEST_TIMEOUT) $(RACE_PKGS)

# The envelope and fs tests again with crypto/cipher's AES-GCM in place of
# the VAES code, which the default run picks on processors that have it.
test-gcm-go:
	KMSFS_GCM=go $(GO) test -timeout $(TEST_TIMEOUT) ./envelope/... ./fs/

# A build without cgo: everything but PKCS#11 keys, whose stub says to
# rebuild with cgo. vet compiles the test files too; the tests named
# TestNoCgo* (which exist only in such a build) check that stub and mount
# a local-key volume with a cgo-free kmsfs.
build-nocgo:
	CGO_ENABLED=0 $(GO) build ./...
	CGO_ENABLED=0 $(GO) vet ./...
	CGO_ENABLED=0 $(GO) test -timeout $(TEST_TIMEOUT) -run '^TestNoCgo' ./keysource/pkcs11/ ./integration/

# A cross-build for linux/arm64 (without cgo: no C cross-compiler needed),
# where envelope runs without its amd64 assembly.
cross:
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) build ./...
	GOOS=linux GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./...

lint: $(BIN)/staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags mangen ./cmd/kmsfs/
	$(BIN)/staticcheck ./...
	$(BIN)/staticcheck -tags mangen ./cmd/kmsfs/

# Regenerate envelope/internal/vaesgcm/vaesgcm_amd64.s from its generator
# in _asm (a test fails when the committed file differs from its output).
.PHONY: generate
generate:
	$(GO) generate ./envelope/internal/vaesgcm/

# Regenerate the golden test vectors (never done by tests).
vectors:
	$(GO) run ./envelope/internal/vectorgen/cmd/vectorgen

tools: $(BIN)/local-kms $(BIN)/staticcheck $(BIN)/benchstat

$(BIN)/local-kms:
	GOBIN=$(BIN) $(GO) install github.com/nsmithuk/local-kms@$(LOCAL_KMS_VERSION)
$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/benchstat:
	GOBIN=$(BIN) $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

# Install kmsfs, its man pages and shell completions under PREFIX (staged
# under DESTDIR for a package). mount(8) runs a fuse.kmsfs fstab line
# through /sbin/mount.fuse.kmsfs (it searches /sbin only, whatever PREFIX
# is), a link to fuse3's mount.fuse3, which runs `kmsfs` by the shell's
# default PATH (mount(8) clears PATH): BINDIR must be on that path, as
# /usr/local/bin and /usr/bin are.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DATADIR ?= $(PREFIX)/share
SBINDIR ?= /sbin
MOUNT_FUSE3 ?= $(or $(shell PATH=/usr/sbin:/sbin:/usr/bin:/bin command -v mount.fuse3),/sbin/mount.fuse3)
# The man pages carry the date of the last commit, not of the build: the
# same tree makes the same pages.
MAN_DATE ?= $(or $(shell git log -1 --format=%cs 2>/dev/null),$(shell date -u -r Makefile +%F))
MANOUT ?= out/man
INSTALLED := $(BINDIR)/kmsfs $(SBINDIR)/mount.fuse.kmsfs \
	$(DATADIR)/bash-completion/completions/kmsfs $(DATADIR)/zsh/site-functions/_kmsfs \
	$(DATADIR)/fish/vendor_completions.d/kmsfs.fish

.PHONY: man install uninstall

# kmsfs(1), a page per command, and kmsfs-format(5) from docs/FORMAT.md,
# into $(MANOUT), by a build of kmsfs with the generator (tag mangen).
man:
	@rm -rf $(MANOUT)
	$(GO) run -tags mangen ./cmd/kmsfs gen-man --date $(MAN_DATE) --format docs/FORMAT.md $(MANOUT)

install: build man
	install -D -m 0755 $(BIN)/kmsfs $(DESTDIR)$(BINDIR)/kmsfs
	install -d $(DESTDIR)$(SBINDIR)
	ln -sfn $(MOUNT_FUSE3) $(DESTDIR)$(SBINDIR)/mount.fuse.kmsfs
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5
	install -m 0644 $(MANOUT)/man1/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 $(MANOUT)/man5/*.5 $(DESTDIR)$(MANDIR)/man5/
	install -d $(DESTDIR)$(DATADIR)/bash-completion/completions $(DESTDIR)$(DATADIR)/zsh/site-functions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	$(BIN)/kmsfs completion bash > $(DESTDIR)$(DATADIR)/bash-completion/completions/kmsfs
	$(BIN)/kmsfs completion zsh > $(DESTDIR)$(DATADIR)/zsh/site-functions/_kmsfs
	$(BIN)/kmsfs completion fish > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/kmsfs.fish
	@case ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" in *":$(BINDIR):"*) ;; \
		*) echo "note: mount(8) finds kmsfs only on /usr/local/bin, /usr/bin and the like, not $(BINDIR)";; esac

# Removes what install put there.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	rm -f $(DESTDIR)$(MANDIR)/man1/kmsfs.1 $(DESTDIR)$(MANDIR)/man1/kmsfs-*.1 $(DESTDIR)$(MANDIR)/man5/kmsfs-format.5

clean:
	rm -rf $(BIN)/kmsfs out
