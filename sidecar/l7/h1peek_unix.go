//go:build darwin || freebsd || netbsd || openbsd || dragonfly

package l7

import "syscall"

// canPeek: idle connections are checked with a non-blocking MSG_PEEK.
const canPeek = true

// peek is the liveness check's raw read: it looks at the socket without blocking and
// without consuming anything. It never asks to wait for readiness.
func (c *h1Conn) peek(fd uintptr) bool {
	n, _, err := syscall.Recvfrom(int(fd), c.peekBuf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	if err != nil {
		n = -1
	}
	c.peekN, c.peekErr, c.peekDone = n, err, true
	return true
}
