//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package l7

// canPeek: without MSG_PEEK, idle connections are taken unchecked; a request on one the
// upstream closed is retried once as http.Transport does.
const canPeek = false

func (c *h1Conn) peek(uintptr) bool { return true }
