package l7

import (
	"syscall"
	"unsafe"
)

// canPeek: idle connections are checked with a non-blocking MSG_PEEK.
const canPeek = true

// peek is the liveness check's raw read: it looks at the socket without blocking and
// without consuming anything. It never asks to wait for readiness. It is a raw system
// call, as the proxy's reads and writes are (see WithRawIO).
func (c *h1Conn) peek(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&c.peekBuf[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		var err error
		r := int(n)
		if e != 0 {
			err, r = e, -1
		}
		c.peekN, c.peekErr, c.peekDone = r, err, true
		return true
	}
}
