package ferrytest

import (
	"bytes"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Child is a real component a test runs beside Ferry (a Consul agent, Jaeger): its command,
// the file its output goes to, and when it exited. Its methods are safe for concurrent use.
type Child struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	err     error // cmd.Wait's result, valid once exited is closed
}

// StartChild starts cmd, whose Stdout and Stderr the caller has pointed at logPath, and
// watches for its exit.
func StartChild(cmd *exec.Cmd, logPath string) (*Child, error) {
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &Child{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.exited)
	}()
	return c, nil
}

// Exited is closed when the process has exited.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// Err is how the process exited; call it only after Exited is closed.
func (c *Child) Err() error { return c.err }

// ExitCode is the exit code as a shell reports it (128+N when killed by signal N); call it
// only after Exited is closed.
func (c *Child) ExitCode() int {
	code := c.cmd.ProcessState.ExitCode()
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && code == -1 && ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	return code
}

// Pid is the process ID.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Stop sends sig, waits up to grace for the process to exit, then kills it. It is
// idempotent.
func (c *Child) Stop(sig os.Signal, grace time.Duration) {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(sig)
	select {
	case <-c.exited:
		return
	case <-time.After(grace):
	}
	c.Kill()
}

// Kill stops the process at once with SIGKILL, as a crash would, and waits for it to exit.
func (c *Child) Kill() {
	select {
	case <-c.exited:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exited
}

// LogPath is the file the process writes to.
func (c *Child) LogPath() string { return c.logPath }

// LogTail returns the last n lines of the process's output.
func (c *Child) LogTail(n int) string {
	data, err := os.ReadFile(c.logPath)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
