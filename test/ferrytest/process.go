package ferrytest

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Options vary StartWith.
type Options struct {
	// Env is the environment of the process; nil inherits the test's.
	Env []string
	// Grace, if positive, makes the cleanup send SIGTERM and wait this long before
	// SIGKILL; zero kills a still running process at once.
	Grace time.Duration
	// Name names the process in the output logged when the test failed.
	Name string
}

// Process is one running ferry process.
type Process struct {
	// Cmd is the running command.
	Cmd *exec.Cmd

	t     testing.TB
	admin string // admin host:port
	child *Child // its output (and its app's) goes to child.LogPath()
}

// Start runs `ferry run --config config [-- app...]` with the binary bin; admin is the
// config's admin.address. It does not wait for readiness (see WaitReady). The process is
// killed at cleanup if it is still running, and its output is logged if the test failed.
func Start(t testing.TB, bin, config, admin string, app ...string) *Process {
	t.Helper()
	return StartWith(t, Options{}, bin, config, admin, app...)
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options, bin, config, admin string, app ...string) *Process {
	t.Helper()
	args := []string{"run", "--config", config}
	if len(app) > 0 {
		args = append(append(args, "--"), app...)
	}
	logPath := filepath.Join(t.TempDir(), "ferry.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	// Files, not pipes: no copying goroutines, and an app that outlives a killed ferry
	// cannot hold up Wait.
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = o.Env
	// If the test binary dies, ferry dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	child, err := StartChild(cmd, logPath)
	if err != nil {
		t.Fatalf("start ferry: %v", err)
	}
	p := &Process{Cmd: cmd, t: t, admin: admin, child: child}
	t.Cleanup(func() {
		if o.Grace > 0 {
			p.Stop(o.Grace)
		} else {
			child.Kill()
		}
		if t.Failed() {
			name := o.Name
			if name == "" {
				name = config
			}
			t.Logf("ferry output (%s):\n%s", name, p.Output())
		}
	})
	return p
}

// Stop sends SIGTERM and waits for the process to exit, killing it after grace.
func (p *Process) Stop(grace time.Duration) { p.child.Stop(syscall.SIGTERM, grace) }

// Output returns everything the process (and its app) wrote so far.
func (p *Process) Output() string {
	b, err := os.ReadFile(p.child.LogPath())
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return string(b)
}

// LogPath is the file holding the output of the process.
func (p *Process) LogPath() string { return p.child.LogPath() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.child.Exited() }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.child.Exited():
		return true
	default:
		return false
	}
}

// ExitCode is the exit code of the process (128+N if killed by signal N); valid once it
// has exited.
func (p *Process) ExitCode() int { return p.child.ExitCode() }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) {
	p.t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Wait waits up to timeout for the process to exit and returns its exit code.
func (p *Process) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.child.Exited():
		return p.child.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("ferry did not exit within %v", timeout)
		return -1
	}
}

// AdminURL is the URL of an admin endpoint.
func (p *Process) AdminURL(path string) string { return "http://" + p.admin + path }

// WaitReady waits up to ReadyTimeout until /ready answers 200.
func (p *Process) WaitReady() {
	p.t.Helper()
	c := NewClient(p.t, 16, nil)
	deadline := time.Now().Add(ReadyTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		if p.Exited() {
			p.t.Fatalf("ferry exited with code %d before it was ready", p.ExitCode())
		}
		resp, err := c.Get(p.AdminURL("/ready"))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("ferry not ready after %v: last /ready: %s", ReadyTimeout, last)
}
