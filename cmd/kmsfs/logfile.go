package main

import (
	"fmt"
	"os"
	"runtime/debug"
	"sync"
)

// logFile is the writer of --log-file: it appends to the file at path and,
// after Reopen, to a fresh file at the same path. logrotate moves the old
// file away and sends SIGHUP (postrotate); lines before the signal stay in
// the moved file, lines after it go to the new one, and none is lost or
// written twice, as copytruncate would risk. It is safe for concurrent use.
type logFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// openLogFile opens (creating it, mode 0600: log lines name files and
// keys) the log file at path for appending.
func openLogFile(path string) (*logFile, error) {
	f, err := openAppend(path)
	if err != nil {
		return nil, err
	}
	return &logFile{path: path, f: f}, nil
}

// openAppend opens the log file and makes it the crash output too: a
// background daemon's stderr is /dev/null, so a fatal error or an
// unrecovered panic would otherwise end the mount without a trace.
func openAppend(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--log-file: %w", err)
	}
	if err := debug.SetCrashOutput(f, debug.CrashOptions{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("--log-file: crash output: %w", err)
	}
	return f, nil
}

// Write appends p to the current file.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Reopen switches to the file now at the path, creating it if it was
// moved away, and closes the old one. If the path cannot be opened, the
// old file stays in use: a log going on in the rotated file beats none.
func (l *logFile) Reopen() error {
	f, err := openAppend(l.path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	return old.Close()
}
