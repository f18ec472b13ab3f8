package l7

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"unsafe"
)

// WithRawIO returns c with its reads and writes made as raw system calls when c is a TCP
// connection (other connections are returned as they are). Use it for the HTTP proxy's
// connections, whose sockets are non-blocking and whose reads and writes never block in
// the kernel.
//
// Why: Go's runtime marks a goroutine in a system call as such, and its monitor thread
// (sysmon) takes the processor away from a call that spans two of its ticks (20 µs apart
// while it keeps finding work) and hands it to another thread. A proxy spends about half
// its time in read(2) and write(2) on loopback sockets, and a write that wakes a peer on
// another core can take tens of microseconds; with GOMAXPROCS=1 (a sidecar's usual one
// core) every such hand-off parks one thread, wakes another and keeps sysmon polling,
// which cost the two-sidecar mTLS path about a tenth of its CPU for nothing, since the
// processor has no other goroutine to run meanwhile that could not wait a few
// microseconds. Raw calls on a non-blocking socket are as short as the kernel's work and
// are invisible to sysmon; readiness still comes from the netpoller (syscall.RawConn),
// and deadlines and Close work as with the plain methods.
//
// The calls are recvfrom(2) and sendto(2), not read(2) and write(2): on a socket they skip
// the VFS layer (file position lock, rw_verify_area, the security hook), about 1 µs per
// proxied request on the two-sidecar path by perf's kernel profile, and sendto's
// MSG_NOSIGNAL turns a write to a reset connection into EPIPE without raising SIGPIPE.
//
// The result keeps *net.TCPConn's other methods (CloseWrite, SyscallConn, ReadFrom,
// SetDeadline...) and is, like any net.Conn, safe for concurrent use: concurrent Reads
// (or Writes) take turns, as they do on the file descriptor's own lock.
func WithRawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawTCPConn{TCPConn: tc, rc: rc}
	r.readFn = r.doRead
	r.writeFn = r.doWrite
	return r
}

// rawTCPConn is WithRawIO's connection. The callbacks are bound once and their arguments
// and results travel in fields (guarded by rmu and wmu), so a call allocates nothing.
type rawTCPConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu     sync.Mutex
	rbuf    []byte
	rn      int
	rerr    syscall.Errno
	readFn  func(fd uintptr) bool
	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

// Read reads as (*net.TCPConn).Read does.
func (c *rawTCPConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rbuf = nil
	c.rmu.Unlock()
	runtime.KeepAlive(p)
	switch {
	case err != nil:
		return 0, c.opError("read", unwrapRaw(err))
	case errno != 0:
		return 0, c.opError("read", os.NewSyscallError("read", errno))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// doRead is the read callback: false asks the netpoller to wait for readability.
func (c *rawTCPConn) doRead(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)), 0, 0, 0)
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rerr = e
		return true
	}
}

// Write writes all of p as (*net.TCPConn).Write does, waiting for writability as often as
// the socket's buffer asks.
func (c *rawTCPConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wbuf = nil
	c.wmu.Unlock()
	runtime.KeepAlive(p)
	switch {
	case err != nil:
		return n, c.opError("write", unwrapRaw(err))
	case errno != 0:
		return n, c.opError("write", os.NewSyscallError("write", errno))
	}
	return n, nil
}

// doWrite is the write callback: it writes until all of c.wbuf is written (true), the
// socket's buffer is full (false: wait for writability, then go on) or an error (true).
func (c *rawTCPConn) doWrite(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, e := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)), syscall.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			c.wn += int(n)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.werr = e
		return true
	}
	return true
}

// opError wraps err as the net package's methods do, so callers' errors.Is(net.ErrClosed),
// os.ErrDeadlineExceeded and net.Error checks see the same errors as on a *net.TCPConn.
func (c *rawTCPConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// unwrapRaw takes the poll error (net.ErrClosed, os.ErrDeadlineExceeded...) out of the
// *net.OpError that syscall.RawConn's methods return ("raw-read", "raw-write").
func unwrapRaw(err error) error {
	if oe, ok := err.(*net.OpError); ok {
		return oe.Err
	}
	return err
}
