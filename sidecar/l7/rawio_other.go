//go:build !linux

package l7

import "net"

// WithRawIO returns c unchanged: raw system calls for the proxy's sockets are made on
// Linux only (see rawio_linux.go).
func WithRawIO(c net.Conn) net.Conn { return c }
